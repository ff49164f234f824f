// The sample recycling-sort flow end to end: real photos in, results on the documented MQTT topics.
const { test, after } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('fs');
const path = require('path');
const { ROOT, redHelper, loadFlow, tmpDir, validationPhotos, startMosquitto, collect, until, sorterFlowNodes } = require('./helpers');

const helper = redHelper();
const nodes = sorterFlowNodes();
const BIN_OF = { glass: 'containers', metal: 'containers', plastic: 'containers', paper: 'fibre', cardboard: 'fibre', trash: 'landfill' };
const PER_CLASS = 6;

after(() => helper.unload());

test('the sorter flow classifies real photos and publishes results and bin decisions', async () => {
  // Photos the model never trained on, named so the true class can be read back from frame.origin.
  const source = tmpDir('sorter-source-');
  const photos = validationPhotos(PER_CLASS);
  for (const p of photos) fs.symlinkSync(p.file, path.join(source, `${p.label}-${path.basename(p.file)}`));
  const reviewDir = tmpDir('sorter-review-');
  const broker = await startMosquitto();
  const sub = await collect(broker.url, ['recycling/#']);
  Object.assign(process.env, {
    SORTER_SOURCE: source, SORTER_INTERVAL_MS: '200', SORTER_CAMERA_ID: 'belt1', MQTT_URL: broker.url, SORTER_REVIEW_DIR: reviewDir,
  });
  try {
    const flow = JSON.parse(fs.readFileSync(path.join(ROOT, 'flows', 'recycling-sorter.json'), 'utf8'));
    await loadFlow(helper, nodes, flow);
    const total = photos.length;
    const isResult = (m) => m.topic === 'recycling/belt1/result' && JSON.parse(m.payload).seq <= total;
    await sub.waitFor(total, 60_000, isResult).catch(() => undefined);
    const results = sub.messages.filter(isResult).map((m) => JSON.parse(m.payload));
    assert.ok(results.length >= total - 2, `${results.length} of ${total} frames produced a result`);

    let right = 0;
    let wrongBin = 0;
    for (const r of results) {
      for (const field of ['camera', 'seq', 'capturedAt', 'origin', 'label', 'score', 'topK', 'bin']) assert.ok(field in r, `result has ${field}`);
      assert.equal(r.camera, 'belt1');
      assert.ok(r.origin.startsWith(source));
      assert.equal(r.topK.length, 3);
      assert.equal(r.topK[0].label, r.label);
      const truth = path.basename(r.origin).split('-')[0];
      if (r.bin === 'review') assert.ok(r.score < 0.6, 'only low-confidence frames go to review');
      else assert.equal(r.bin, BIN_OF[r.label], 'the bin follows the predicted class');
      if (r.bin === BIN_OF[truth]) right++;
      else if (r.bin !== 'review') wrongBin++;
    }
    // Uncertain frames going to review is the flow doing its job, not a wrong bin. On all 414
    // validation photos the shipped model at the flow's 0.6 sends 18.6 % to review and 0.7 % to a
    // wrong bin (models/README.md); these 36 get margins for their sampling noise.
    const reviewed = results.filter((r) => r.bin === 'review');
    assert.ok(wrongBin <= 0.1 * results.length, `wrong bin for ${wrongBin} of ${results.length} photos`);
    assert.ok(reviewed.length <= results.length / 3, `${reviewed.length} of ${results.length} photos sent to review`);

    // Results and decisions are two publishes per frame: wait for the decisions of the same frames.
    const isDivert = (m) => m.topic === 'recycling/belt1/divert' && JSON.parse(m.payload).seq <= total;
    await sub.waitFor(results.length, 15_000, isDivert);
    const diverts = sub.messages.filter(isDivert).map((m) => JSON.parse(m.payload));
    assert.ok(diverts.length >= results.length, `${diverts.length} decisions for ${results.length} results`);
    const bySeq = new Map(results.map((r) => [r.seq, r]));
    for (const d of diverts.filter((x) => bySeq.has(x.seq))) {
      assert.equal(d.bin, bySeq.get(d.seq).bin);
      assert.equal(d.label, bySeq.get(d.seq).label);
    }

    const savedFrames = () => (fs.existsSync(reviewDir) ? fs.readdirSync(reviewDir, { recursive: true }).filter((f) => f.endsWith('.jpg')) : []);
    await until(() => savedFrames().length >= reviewed.length, 10_000, 'the uncertain frames on disk').catch(() => undefined);
    const saved = savedFrames();
    assert.ok(saved.length >= reviewed.length, `${reviewed.length} uncertain frames, ${saved.length} saved for retraining`);
    console.log(`# sorter flow: ${results.length} results, right bin ${right}, review ${reviewed.length}, saved ${saved.length}`);
  } finally {
    await helper.unload();
    await sub.close();
    await broker.close();
  }
});
