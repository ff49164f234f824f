// The sample sorter flow with several cameras from SORTER_CAMERAS: folders of real photos and an MJPEG
// camera on loopback, results and camera events on each camera's own topics of a real broker.
const { test, after } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('fs');
const path = require('path');
const { ROOT, redHelper, loadFlow, tmpDir, validationPhotos, freePort, startMosquitto, collect, until, mjpegCamera, sorterFlowNodes } = require('./helpers');

const helper = redHelper();
const nodes = sorterFlowNodes();
const ENV = ['SORTER_CAMERAS', 'SORTER_SOURCE', 'SORTER_CAMERA_ID', 'SORTER_INTERVAL_MS', 'MQTT_URL', 'SORTER_REVIEW_DIR'];
const saved = Object.fromEntries(ENV.map((k) => [k, process.env[k]]));

function setEnv(values) {
  for (const k of ENV) delete process.env[k];
  Object.assign(process.env, values);
}

after(async () => {
  await helper.unload();
  for (const [k, v] of Object.entries(saved)) {
    if (v === undefined) delete process.env[k];
    else process.env[k] = v;
  }
});

const sorterFlow = () => JSON.parse(fs.readFileSync(path.join(ROOT, 'flows', 'recycling-sorter.json'), 'utf8'));

test('SORTER_CAMERAS: each camera has its own seq, results, decisions and events on recycling/<id>/...', async () => {
  const photos = validationPhotos(2);
  const folders = {};
  for (const [i, id] of ['belt1', 'belt2'].entries()) {
    folders[id] = tmpDir(`sorter-${id}-`);
    for (const p of photos.slice(i * 6, i * 6 + 6)) fs.symlinkSync(p.file, path.join(folders[id], `${p.label}-${path.basename(p.file)}`));
  }
  const camera = await mjpegCamera(await freePort(), photos.slice(0, 3).map((p) => fs.readFileSync(p.file)), 200);
  const broker = await startMosquitto();
  const sub = await collect(broker.url, ['recycling/#']);
  // The JSON form; a single camera's variables set as well are not used.
  const cameras = [{ id: 'belt1', source: folders.belt1 }, { id: 'belt2', source: folders.belt2 }, { id: 'belt3', source: camera.url }];
  setEnv({
    SORTER_CAMERAS: JSON.stringify(cameras), SORTER_SOURCE: folders.belt1, SORTER_CAMERA_ID: 'single',
    SORTER_INTERVAL_MS: '500', MQTT_URL: broker.url, SORTER_REVIEW_DIR: tmpDir('sorter-review-'),
  });
  try {
    await loadFlow(helper, nodes, sorterFlow());
    const results = (id) => sub.messages.filter((m) => m.topic === `recycling/${id}/result`).map((m) => JSON.parse(m.payload));
    await until(() => ['belt1', 'belt2', 'belt3'].every((id) => results(id).length >= 4), 60_000, 'four results from each camera');
    const events = () => sub.messages.filter((m) => m.topic.endsWith('/camera')).map((m) => ({ topic: m.topic, ...JSON.parse(m.payload) }));
    assert.deepEqual(events().map((e) => [e.topic, e.event, e.camera, e.source]), [['recycling/belt3/camera', 'online', 'belt3', 'mjpeg']]);

    for (const { id, source } of cameras) {
      const mine = results(id);
      assert.ok(mine.every((r) => r.camera === id), `${id}'s results name it`);
      const seqs = mine.map((r) => r.seq);
      assert.deepEqual(seqs, [...seqs].sort((a, b) => a - b), `${id}'s results come in its own frame order`);
      assert.equal(new Set(seqs).size, seqs.length, `${id}'s frame numbers are its own: ${seqs.join(',')}`);
      assert.ok(Math.max(...seqs) < 20, `${id} counts its own frames only: ${seqs.join(',')}`);
      assert.ok(mine.every((r) => r.id === `${id}-${Date.parse(r.capturedAt)}-${r.seq}`));
      if (id === 'belt3') assert.ok(mine.every((r) => r.origin === camera.url));
      else assert.ok(mine.every((r) => path.dirname(r.origin) === source), `${id}'s frames come from its own folder`);
      for (const field of ['camera', 'seq', 'capturedAt', 'origin', 'label', 'score', 'topK', 'bin', 'reason', 'inferenceMs', 'model']) {
        assert.ok(field in mine[0], `result has ${field}`);
      }
    }
    await until(() => ['belt1', 'belt2', 'belt3'].every((id) => sub.messages.some((m) => m.topic === `recycling/${id}/divert`)), 15_000, 'a decision per camera');
    assert.ok(!sub.messages.some((m) => m.topic.startsWith('recycling/single/')), 'SORTER_CAMERA_ID is not used with a camera list');

    // belt3 goes away: its offline event comes on its topic, and the other cameras go on.
    await camera.close();
    await until(() => events().some((e) => e.event === 'offline'), 20_000, 'the offline event');
    const offline = events().find((e) => e.event === 'offline');
    assert.equal(offline.topic, 'recycling/belt3/camera');
    assert.equal(offline.camera, 'belt3');
    const counts = { belt1: results('belt1').length, belt2: results('belt2').length };
    await until(() => results('belt1').length > counts.belt1 + 1 && results('belt2').length > counts.belt2 + 1, 15_000, 'belt1 and belt2 going on');
    console.log(`# ${['belt1', 'belt2', 'belt3'].map((id) => `${id}: ${results(id).length} results`).join(', ')}; events ${events().map((e) => `${e.camera} ${e.event}`).join(', ')}`);
  } finally {
    await helper.unload();
    await camera.close();
    await sub.close();
    await broker.close();
  }
});

test('a bad SORTER_CAMERAS stops the camera with an error naming the entry; unset, SORTER_SOURCE applies', async () => {
  setEnv({ SORTER_CAMERAS: 'belt1=/data/a,belt 2=/data/b', SORTER_INTERVAL_MS: '500', MQTT_URL: `mqtt://127.0.0.1:${await freePort()}` });
  await loadFlow(helper, nodes, sorterFlow());
  const caught = new Promise((resolve) => helper.getNode('errors').on('input', resolve));
  helper.getNode('camera').receive({});
  assert.match((await caught).error.message, /camera not started: cameras entry 2 \("belt 2=\/data\/b"\) has the id "belt 2": an id may only hold letters, digits/);
  await helper.unload();

  // Empty counts as unset (a Greengrass configuration with no cameras): one camera from SORTER_SOURCE.
  const folder = tmpDir('sorter-single-');
  fs.symlinkSync(validationPhotos(1)[0].file, path.join(folder, 'a.jpg'));
  setEnv({ SORTER_CAMERAS: '', SORTER_SOURCE: folder, SORTER_CAMERA_ID: 'belt7', SORTER_INTERVAL_MS: '0', MQTT_URL: `mqtt://127.0.0.1:${await freePort()}` });
  await loadFlow(helper, nodes, sorterFlow());
  const frame = new Promise((resolve) => helper.getNode('preprocess').on('input', resolve));
  helper.getNode('camera').receive({});
  const msg = await frame;
  assert.equal(msg.frame.camera, 'belt7');
  assert.equal(msg.frame.seq, 1);
  assert.equal(msg.frame.origin, path.join(folder, 'a.jpg'));
});
