// Drive the page in headless Chromium (puppeteer-core, pointed at the machine's chromium): the page's logits for
// fixed inputs, one text typed into the page, and a screenshot.
//   node drive.mjs URL INPUTS.jsonl SCREENSHOT.png [CHROMIUM]
//     -> {"loadMs", "perInputMs", "crossOriginIsolated", "logits": [[...]], "typed": {...}, "errors": [...]} on stdout
import { readFileSync } from 'node:fs';
import puppeteer from 'puppeteer-core';

const [url, inputsFile, screenshot, executablePath = process.env.CHROMIUM || '/usr/bin/chromium'] = process.argv.slice(2);
const rows = readFileSync(inputsFile, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l));
const browser = await puppeteer.launch({ executablePath, headless: true, args: ['--no-sandbox'] }); // root needs --no-sandbox
try {
  const page = await browser.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  page.on('console', (m) => { if (m.type() === 'error') errors.push(m.text()); });
  await page.setViewport({ width: 900, height: 560 });
  await page.goto(url);
  await page.waitForFunction(() => window.compress?.ready || false, { timeout: 120000 }).catch((e) => {
    throw new Error(`the page did not load the model: ${errors.join(' | ') || e}`);
  });
  const pairs = rows.every((r) => r.text_pair != null) ? rows.map((r) => r.text_pair) : null;
  const logits = await page.evaluate((t, p) => window.compress.classify(t, p), rows.map((r) => r.text), pairs);
  const perInputMs = await page.evaluate(async (t, p) => { // one input at a time, as a user types: the median
    const ms = [];
    for (let i = 0; i < Math.min(t.length, 30); i++) {
      const start = performance.now();
      await window.compress.classify([t[i]], p ? [p[i]] : null);
      ms.push(performance.now() - start);
    }
    return ms.sort((a, b) => a - b)[Math.floor(ms.length / 2)];
  }, rows.map((r) => r.text), pairs);
  // what a user does: type, wait for the page's answer
  const first = rows[0];
  await page.$eval('#text', (el, v) => { el.value = v; }, first.text);
  await page.$eval('#pair', (el, v) => { el.value = v ?? ''; }, first.text_pair);
  await page.$eval('#result', (el) => { el.textContent = ''; });
  await page.$eval('#pair', (el) => el.dispatchEvent(new Event('input')));
  await page.waitForFunction(() => document.getElementById('result').textContent !== '', { timeout: 30000 });
  const typed = { result: await page.$eval('#result', (el) => el.textContent), detail: await page.$eval('#detail', (el) => el.textContent) };
  await page.screenshot({ path: screenshot });
  const loadMs = await page.evaluate(() => window.compress.loadMs);
  const threads = await page.evaluate(() => self.crossOriginIsolated);
  console.log(JSON.stringify({ loadMs, perInputMs, crossOriginIsolated: threads, logits, typed, errors }));
} finally {
  await browser.close();
}
