#!/usr/bin/env node
// Regenerates the measured parts of a classifier's model card from the model itself: accuracy,
// per-class precision/recall and confusion through the collection's own pipeline (tools/evaluate.js,
// the path test/model-accuracy.test.js re-measures), latency and size on this machine, and the
// training figures from the run's .metrics.json. Each part sits between
//   <!-- generated:NAME -->  and  <!-- /generated:NAME -->
// in the card (NAME: validation, speed, training); the prose around them is written by hand.
// Usage: npx tsc -p . && node tools/model-card.js [--model models/waste-classifier.onnx]
//          [--card models/README.md] [--metrics <model>.metrics.json] [--runs 300] [--parts validation,speed,training] [--check]
// --parts regenerates only those parts (say, no speed figures while the machine is busy training).
// --check only compares the card's validation part with a fresh measurement (exit 1 if they differ).
const fs = require('fs');
const os = require('os');
const path = require('path');

const { root, option, flag } = require('./cli');
const { evaluateClassifier } = require('./evaluate');
const { inferenceLatency, preprocessSample } = require('./benchmark');
const { readOnnxMetadataProps, describeModel } = require(path.join(root, 'nodes/lib/onnx-metadata'));

const modelPath = path.resolve(option('model', path.join(root, 'models', 'waste-classifier.onnx')));
const cardPath = path.resolve(option('card', path.join(root, 'models', 'README.md')));
const metricsPath = path.resolve(option('metrics', modelPath.replace(/\.onnx$/, '.metrics.json')));
const runs = Number(option('runs', 300));
const parts = option('parts', 'validation,speed,training').split(',');

const pct = (x, digits = 1) => `${(100 * x).toFixed(digits)} %`;
const ms = (x) => `${x.toFixed(2)} ms`;

function validationPart(result) {
  const labels = result.confusion_matrix.rows_true_cols_predicted;
  const { matrix } = result.confusion_matrix;
  const lines = [
    `Top-1 accuracy through the collection's own pipeline (\`sharp\` pre-processing exactly as the metadata says, onnxruntime-node): **${pct(result.accuracy)} (${result.correct}/${result.photos})**.`,
    '',
    '| class | precision | recall | photos |',
    '| --- | ---: | ---: | ---: |',
    ...labels.map((c) => {
      const v = result.per_class[c];
      return `| ${c} | ${v.precision.toFixed(2)} | ${v.recall.toFixed(2)} | ${v.support} |`;
    }),
    '',
    'Confusion matrix (rows: true class, columns: predicted):',
    '',
    `| | ${labels.join(' | ')} |`,
    `| --- | ${labels.map(() => '---:').join(' | ')} |`,
    ...matrix.map((row, i) => `| ${labels[i]} | ${row.map((n, j) => (i === j ? `**${n}**` : String(n))).join(' | ')} |`),
  ];
  return lines.join('\n');
}

function speedPart(bytes, latency, pre) {
  const cpu = os.cpus();
  const row = (what, s) => `| ${what} | ${ms(s.mean)} | ${ms(s.p50)} | ${ms(s.p95)} |`;
  return [
    `Measured by \`node tools/model-card.js\` on ${cpu.length} x ${cpu[0].model.trim()}, Node ${process.version}, onnxruntime-node ${require('onnxruntime-node/package.json').version}, CPU (${runs} runs each after a warm-up):`,
    '',
    '| | mean | p50 | p95 |',
    '| --- | ---: | ---: | ---: |',
    ...latency.map((l) => row(`inference, 1 image, ${l.threads} thread${l.threads > 1 ? 's' : ''}`, l)),
    row(`\`sharp\` pre-processing of a ${pre.source} JPEG`, pre),
    '',
    `Size on disk: ${(bytes.length / 1e6).toFixed(2)} MB (${(bytes.length / 1048576).toFixed(2)} MiB).`,
  ].join('\n');
}

function trainingPart(metrics) {
  if (!metrics) return '_No `.metrics.json` beside the model: training figures unknown._';
  if (metrics.members) {
    // An ensemble folded by tools/train/ensemble.py.
    const trainingOf = (m) => (typeof m.training === 'string' ? JSON.parse(m.training) : (m.training || {}));
    // A member that started from another member's weights (same seed, epochs and minutes) names it.
    const sameRun = (from, m) => ['seed', 'epochs', 'train_minutes'].every((k) => from[k] !== undefined && from[k] === trainingOf(m)[k]);
    const origins = metrics.members.map((m, i) => ({ i, from: trainingOf(m).init_onnx })).filter((o) => o.from)
      .map((o) => ({ ...o, parent: metrics.members.findIndex((m, j) => j !== o.i && sameRun(o.from, m)) }));
    const startedFrom = origins.map(({ i, from, parent }) => (parent >= 0
      ? `Member ${i + 1} is a further run from the weights of member ${parent + 1} (member ${i + 1}'s run recorded member ${parent + 1}'s file as \`${from.file}\`).`
      : `Member ${i + 1} started from the weights of \`${from.file}\` (${from.epochs ?? '?'} epochs, ${from.train_minutes ?? '?'} minutes of its own).`));
    const outsideStart = origins.some((o) => o.parent < 0);
    const minutes = metrics.members.map((m) => trainingOf(m).train_minutes);
    const total = minutes.every((n) => typeof n === 'number') ? minutes.reduce((a, b) => a + b, 0) : undefined;
    return [
      `An ensemble of ${metrics.members.length} networks folded into one graph (\`tools/train/ensemble.py\`):`,
      '',
      '| member | view | epochs | seed | training | alone in its view, through the pipeline |',
      '| --- | --- | ---: | ---: | ---: | ---: |',
      ...metrics.members.map((m) => {
        const t = trainingOf(m);
        const alone = m.validation?.accuracy;
        return `| ${m.file} | ${m.view ?? 'as exported'} | ${t.epochs ?? '?'} | ${t.seed ?? '?'} | ${t.train_minutes !== undefined ? `${t.train_minutes} min` : '?'} | ${alone !== undefined ? pct(alone) : '?'} |`;
      }),
      ...(startedFrom.length ? ['', ...startedFrom] : []),
      ...(total !== undefined ? ['', `Training time of all members together: **${total.toFixed(1)} minutes** (the wall-clock minutes each run recorded${outsideStart ? '; a model started from that is not a member adds its own, above' : ''}).`] : []),
    ].join('\n');
  }
  const input = metrics.input ? `${metrics.input[0]} x ${metrics.input[1]}` : 'the default size';
  // A run of train.py --init-onnx / --teacher: the models it started from and learnt from, with their own training.
  const about = (m) => `\`${m.file}\` (${m.input ? `${m.input[0]} x ${m.input[1]}, ` : ''}${m.epochs ?? '?'} epochs, ${m.train_minutes !== undefined ? `${m.train_minutes} minutes` : 'time unknown'}${m.validation_accuracy != null ? `, ${pct(m.validation_accuracy)} as its training measured it` : ''})`;
  const origin = [];
  if (metrics.init_onnx) origin.push(`Started from the weights of ${about(metrics.init_onnx)}.`);
  if (metrics.teachers?.length) {
    origin.push(`Distilled from the mean logits of ${metrics.teachers.map(about).join(' and ')}` +
      `${metrics.distillation ? ` (distillation weight ${metrics.distillation.weight}, temperature ${metrics.distillation.temperature})` : ''}.`);
  }
  return [
    `${metrics.epochs} epochs at ${input} in **${metrics.train_minutes} minutes** on ${metrics.threads || 'all'} thread(s) (seed ${metrics.seed}, PyTorch ${metrics.torch || '?'}).`,
    ...origin,
    `Validation accuracy as training measured it (PIL decode and resize): last weights ${pct(metrics.validation_last_weights)}, ${metrics.averaged_weights || 'EMA'} weights ${pct(metrics.validation_ema_weights)}, exported graph${metrics.flip_average ? ' (mirror-image average)' : ''} ${pct(metrics.validation.accuracy)}.`,
  ].join('\n');
}

/** Where a generated part's body lies in the card: [start, end) between its markers, or undefined. */
function partSpan(card, name) {
  const open = `<!-- generated:${name} -->`;
  const start = card.indexOf(open);
  const end = card.indexOf(`<!-- /generated:${name} -->`);
  return start < 0 || end < start ? undefined : [start + open.length, end];
}

/** The card with part NAME replaced; the markers must be there already. */
function replacePart(card, name, body) {
  const span = partSpan(card, name);
  if (!span) throw new Error(`${path.relative(root, cardPath)} has no <!-- generated:${name} --> ... <!-- /generated:${name} --> part`);
  return `${card.slice(0, span[0])}\n${body}\n${card.slice(span[1])}`;
}

/** A generated part as the card states it now. */
function statedPart(card, name) {
  const span = partSpan(card, name);
  return span && card.slice(...span).trim();
}

async function main() {
  const bytes = fs.readFileSync(modelPath);
  const card = fs.readFileSync(cardPath, 'utf8');
  const result = await evaluateClassifier(modelPath);
  const validation = validationPart(result);
  if (flag('check')) {
    const same = statedPart(card, 'validation') === validation;
    console.log(same ? `${path.relative(root, cardPath)} states what ${result.model} scores: ${pct(result.accuracy)}` : `${path.relative(root, cardPath)} is out of date:\n${validation}`);
    process.exit(same ? 0 : 1);
  }
  let next = card;
  if (parts.includes('validation')) next = replacePart(next, 'validation', validation);
  const latency = [];
  if (parts.includes('speed')) {
    const { preprocess } = describeModel(readOnnxMetadataProps(bytes));
    const pre = await preprocessSample(preprocess, 60);
    for (const threads of [2, 1]) latency.push({ threads, ...(await inferenceLatency(bytes, pre.tensors, threads, runs)) });
    next = replacePart(next, 'speed', speedPart(bytes, latency, pre.times));
  }
  if (parts.includes('training')) {
    const metrics = fs.existsSync(metricsPath) ? JSON.parse(fs.readFileSync(metricsPath, 'utf8')) : undefined;
    next = replacePart(next, 'training', trainingPart(metrics));
  }
  fs.writeFileSync(cardPath, next);
  console.log(`${path.relative(root, cardPath)}: ${result.model} ${pct(result.accuracy)} (${result.correct}/${result.photos})` +
    latency.map((l) => `; ${l.threads} thread(s) p50 ${ms(l.p50)} p95 ${ms(l.p95)}`).join(''));
}

module.exports = { validationPart, statedPart, trainingPart };

if (require.main === module) {
  main().catch((err) => {
    console.error(err);
    process.exit(1);
  });
}
