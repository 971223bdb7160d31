// The page: Transformers.js (onnxruntime-web, WASM) loads a compress artifact served beside it at ./model/
// (or ?model=URL) and classifies what the user types, with the latency of each input.
// Everything comes from this server: the library and ONNX Runtime's WASM files from node_modules, the model from ./model/.
import { AutoModelForSequenceClassification, AutoTokenizer, env } from './node_modules/@huggingface/transformers/dist/transformers.min.js';

env.allowRemoteModels = false; // never the hub
env.allowLocalModels = true;
env.backends.onnx.wasm.wasmPaths = new URL('./node_modules/onnxruntime-web/dist/', location.href).href; // not the CDN

const modelUrl = new URL(new URLSearchParams(location.search).get('model') || './model/', location.href);
env.localModelPath = new URL('..', modelUrl).pathname; // a path on this server (Transformers.js joins it with the model's name)
const name = modelUrl.pathname.split('/').filter(Boolean).pop();

const $ = (id) => document.getElementById(id);
const t0 = performance.now();
const tokenizer = await AutoTokenizer.from_pretrained(name);
const model = await AutoModelForSequenceClassification.from_pretrained(name, { dtype: 'fp32', device: 'wasm' });
const loadMs = performance.now() - t0;

// logits of texts (and pairs), batched; the text-classification pipeline would ignore the pairs
async function classify(texts, pairs = null, batchSize = 32) {
  const out = [];
  for (let s = 0; s < texts.length; s += batchSize) {
    const inputs = tokenizer(texts.slice(s, s + batchSize), { text_pair: pairs ? pairs.slice(s, s + batchSize) : null, padding: true, truncation: true });
    const { logits } = await model(inputs);
    const [rows, cols] = logits.dims;
    for (let r = 0; r < rows; r++) out.push(Array.from(logits.data.slice(r * cols, (r + 1) * cols)));
  }
  return out;
}

function describe(row) {
  if (row.length === 1) return `${model.config.id2label[0]}: ${row[0].toFixed(3)}`;
  const k = row.indexOf(Math.max(...row));
  const e = row.map((x) => Math.exp(x - row[k]));
  return `${model.config.id2label[k]} (p = ${(e[k] / e.reduce((a, b) => a + b)).toFixed(3)})`;
}

let pending = null;
async function update() {
  const text = $('text').value, pair = $('pair').value.trim();
  if (!text.trim()) return;
  const start = performance.now();
  const [row] = await classify([text], pair ? [pair] : null);
  const ms = performance.now() - start;
  $('result').textContent = describe(row);
  $('detail').textContent = `logits [${row.map((x) => x.toFixed(3)).join(', ')}] · ${ms.toFixed(1)} ms for this input`;
}
for (const id of ['text', 'pair']) $(id).addEventListener('input', () => { clearTimeout(pending); pending = setTimeout(update, 150); });

$('status').textContent = `${model.config.finetuning_task ?? ''} classifier from ${modelUrl.pathname} loaded in ${loadMs.toFixed(0)} ms ` +
  `(onnxruntime-web, WASM, ${self.crossOriginIsolated ? 'threads' : 'one thread'})`;
await update();
window.compress = { classify, loadMs, ready: true }; // for scripts (and the test) driving the page
