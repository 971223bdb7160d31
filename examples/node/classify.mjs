// Classify text with a compress artifact in Node.js: Transformers.js on onnxruntime-node, offline, from disk.
//
//   npm ci                                            (once; ONNXRUNTIME_NODE_INSTALL=skip where its CUDA download is unreachable)
//   node classify.mjs ARTIFACT_DIR "The cat sat on the mat." "A cat was sitting on the mat."
//   node classify.mjs ARTIFACT_DIR --jsonl pairs.jsonl  (one {"text", "text_pair"?} per line -> one {"logits", "label"} per line)
//   node classify.mjs ARTIFACT_DIR --time pairs.jsonl   (load time and the median latency of one input, as JSON)
//
// Transformers.js' text-classification pipeline ignores text_pair, so pairs go through its tokenizer and
// model classes directly. The artifact directory is what `compress run` writes: config.json,
// tokenizer.json, tokenizer_config.json and onnx/model.onnx are what Transformers.js reads.
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { AutoModelForSequenceClassification, AutoTokenizer, env } from '@huggingface/transformers';

export async function load(artifactDir) {
  env.allowRemoteModels = false; // offline: never ask the hub
  env.localModelPath = path.dirname(path.resolve(artifactDir));
  const name = path.basename(path.resolve(artifactDir));
  const tokenizer = await AutoTokenizer.from_pretrained(name);
  const model = await AutoModelForSequenceClassification.from_pretrained(name, { dtype: 'fp32' }); // onnx/model.onnx as shipped
  return { tokenizer, model };
}

export async function classify({ tokenizer, model }, texts, pairs = null, batchSize = 32) {
  const out = [];
  for (let s = 0; s < texts.length; s += batchSize) {
    const text = texts.slice(s, s + batchSize);
    const inputs = tokenizer(text, { text_pair: pairs ? pairs.slice(s, s + batchSize) : null, padding: true, truncation: true });
    const { logits } = await model(inputs);
    const [rows, cols] = logits.dims;
    for (let r = 0; r < rows; r++) {
      const row = Array.from(logits.data.slice(r * cols, (r + 1) * cols));
      const k = cols === 1 ? 0 : row.indexOf(Math.max(...row));
      out.push({ logits: row, label: model.config.id2label[k] });
    }
  }
  return out;
}

async function main(argv) {
  if (argv.length < 2) {
    console.error('usage: node classify.mjs ARTIFACT_DIR TEXT [TEXT_PAIR] | ARTIFACT_DIR --jsonl FILE');
    return 2;
  }
  const t0 = performance.now();
  const clf = await load(argv[0]);
  const loadMs = performance.now() - t0;
  if (argv[1] === '--jsonl' || argv[1] === '--time') {
    const rows = readFileSync(argv[2], 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l));
    const pairs = rows.every((r) => r.text_pair != null) ? rows.map((r) => r.text_pair) : null;
    if (argv[1] === '--jsonl') {
      for (const r of await classify(clf, rows.map((r) => r.text), pairs)) console.log(JSON.stringify(r));
    } else {
      const ms = [];
      for (let i = 0; i < rows.length; i++) {
        const start = performance.now();
        await classify(clf, [rows[i].text], pairs ? [pairs[i]] : null);
        ms.push(performance.now() - start);
      }
      ms.sort((a, b) => a - b);
      console.log(JSON.stringify({ loadMs, perInputMs: ms[Math.floor(ms.length / 2)], inputs: ms.length }));
    }
  } else {
    const [r] = await classify(clf, [argv[1]], argv[2] != null ? [argv[2]] : null);
    console.log(r.logits.length === 1 ? `${r.label}: ${r.logits[0].toFixed(3)}` : `${r.label} (logits ${r.logits.map((x) => x.toFixed(3)).join(', ')})`);
  }
  return 0;
}

if (import.meta.url === `file://${process.argv[1]}`) process.exitCode = await main(process.argv.slice(2));
