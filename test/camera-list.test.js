// Many cameras, the pure parts: the camera list (SORTER_CAMERAS's syntax), per-camera tick phases and
// the schedule, and the summary status. No Node-RED here (see multi-camera.test.js for the runtime).
const { test } = require('node:test');
const assert = require('node:assert/strict');
const { parseCameraList, cameraIdProblem } = require('../nodes/ml-camera/camera-list');
const { phaseOffset, stableHash, nextTickAt, TickSchedule } = require('../nodes/ml-camera/tick-schedule');
const { summariseCameras, isLiveSetting } = require('../nodes/ml-camera/camera-runner');
const { RateMeter } = require('../nodes/lib/frame-queue');

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** How far past its phase a time is, in ms (-interval/2 .. interval/2). */
function pastPhase(at, phase, interval) {
  const o = (((at - phase) % interval) + interval) % interval;
  return o > interval / 2 ? o - interval : o;
}

// ---- the list ---------------------------------------------------------------------------------

test('a comma-separated list: id=source entries split at the first =', () => {
  assert.deepEqual(parseCameraList('belt1=rtsp://10.0.0.21/stream1,belt2=/dev/video0,belt3=/data/photos'), [
    { id: 'belt1', source: 'rtsp://10.0.0.21/stream1' },
    { id: 'belt2', source: '/dev/video0' },
    { id: 'belt3', source: '/data/photos' },
  ]);
  // Only the first = splits: query strings keep theirs; white space around entries, ids and sources goes.
  assert.deepEqual(parseCameraList(' dock.1 = http://cam/snap.cgi?chn=1&size=2 , DOCK_2=pattern '), [
    { id: 'dock.1', source: 'http://cam/snap.cgi?chn=1&size=2' },
    { id: 'DOCK_2', source: 'pattern' },
  ]);
  // Line breaks separate entries as commas do (a multi-line text field), blank lines and a comma ending a line are fine.
  assert.deepEqual(parseCameraList('belt1=/a,\n\nbelt2=/b\r\nbelt3=rtsp://u:p@cam/x\n'), [
    { id: 'belt1', source: '/a' }, { id: 'belt2', source: '/b' }, { id: 'belt3', source: 'rtsp://u:p@cam/x' },
  ]);
  assert.deepEqual(parseCameraList(''), []);
  assert.deepEqual(parseCameraList('  \n '), []);
});

test('a JSON array of {id, source} when the value starts with [', () => {
  assert.deepEqual(parseCameraList('[{"id": "belt1", "source": "rtsp://10.0.0.21/stream1"}, {"id": "belt2", "source": "/data/a,b"}]'), [
    { id: 'belt1', source: 'rtsp://10.0.0.21/stream1' },
    { id: 'belt2', source: '/data/a,b' }, // the JSON form takes sources with commas
  ]);
  assert.deepEqual(parseCameraList(' [ ] '), []);
});

test('bad entries give an error naming the entry, by position and text, without passwords', () => {
  const FORMS = 'expected id=source entries separated by commas, or a JSON array [{"id": "...", "source": "..."}]';
  const refused = (value, message) => assert.throws(() => parseCameraList(value), (err) => {
    assert.equal(err.message, message);
    return true;
  });
  refused('belt1=/a,belt2', `cameras entry 2 ("belt2") is not id=source: ${FORMS}`);
  refused('belt1=/a,,belt2=/b', `cameras entry 2 is empty: ${FORMS} (a stray comma?)`);
  refused('belt1=/a,belt1=/b', 'cameras entry 2 ("belt1=/b") repeats the id "belt1" of entry 1: every camera needs its own id');
  refused('belt1=', 'cameras entry 1 ("belt1=") has no source: give a folder, an image file, a URL, rtsp://..., /dev/videoN, or "pattern" for the test pattern');
  refused('=/data', 'cameras entry 1 ("=/data") has an empty id');
  refused('belt1=/a,line/2=/b', 'cameras entry 2 ("line/2=/b") has the id "line/2": an id may only hold letters, digits, _, - and . (starting with a letter or digit, at most 64 characters), since it becomes an MQTT topic level');
  for (const id of ['a+b', 'a#', 'two words', '$SYS', '-x', 'x'.repeat(65)]) assert.match(cameraIdProblem(id), /an id may only hold/, id);
  assert.equal(cameraIdProblem('belt-1.left_side'), undefined);
  // A password in a source never appears in the message.
  assert.throws(() => parseCameraList('cam1=rtsp://admin:s3cret@10.0.0.5/live,cam1=rtsp://admin:s3cret@10.0.0.6/live'), (err) => {
    assert.equal(err.message, 'cameras entry 2 ("cam1=rtsp://10.0.0.6/live") repeats the id "cam1" of entry 1: every camera needs its own id');
    return true;
  });

  refused('[{"id": "belt1", "source": "/a"}, 7]', 'cameras entry 2 (7) is not an object: expected {"id": "...", "source": "..."}');
  refused('[{"id": "belt1", "src": "/a"}]', 'cameras entry 1 ({"id":"belt1","src":"/a"}) has the unknown key "src": expected only "id" and "source"');
  refused('[{"id": 1, "source": "/a"}]', 'cameras entry 1 ({"id":1,"source":"/a"}) has a id that is not a string');
  refused('[{"id": "belt1"}]', 'cameras entry 1 ({"id":"belt1"}) has no source: give a folder, an image file, a URL, rtsp://..., /dev/videoN, or "pattern" for the test pattern');
  refused('[{"id": "a", "source": "/a"}, {"id": "a", "source": "rtsp://u:pw@h/s"}]', 'cameras entry 2 ({"id":"a","source":"rtsp://h/s"}) repeats the id "a" of entry 1: every camera needs its own id');
  assert.throws(() => parseCameraList('[{"id": "belt1", "source": "/a"'), new RegExp(`^Error: cameras starts with "\\[" but is not valid JSON \\(.+\\): ${FORMS.replace(/[[\]{}().]/g, '\\$&')}$`));
  assert.throws(() => parseCameraList('[1] [2]'), /cameras starts with "\[" but is not valid JSON/);
});

// ---- ticks --------------------------------------------------------------------------------------

test('each camera id has a stable phase within the interval, spread over it', () => {
  // Pinned: the phase must not change between releases, restarts or machines.
  assert.equal(stableHash('belt1'), stableHash('belt1'));
  assert.deepEqual(['belt1', 'belt2', 'belt3'].map((id) => phaseOffset(id, 1000)), [686, 759, 56]);
  assert.deepEqual(['belt1', 'belt2', 'belt3'].map((id) => phaseOffset(id, 400)), [86, 359, 256]);
  for (const interval of [50, 333, 1000, 86_400_000]) {
    for (let i = 0; i < 200; i++) {
      const p = phaseOffset(`cam${i}`, interval);
      assert.ok(Number.isInteger(p) && p >= 0 && p < interval, `${p} in [0, ${interval})`);
    }
  }
  // 100 cameras at 1 frame/s: at most a handful fire in any 10 ms (all 100 did, before).
  const phases = Array.from({ length: 100 }, (_, i) => phaseOffset(`belt${i + 1}`, 1000));
  const busiest = Math.max(...phases.map((p) => phases.filter((q) => (q - p + 1000) % 1000 < 10).length));
  assert.ok(busiest <= 5, `${busiest} of 100 cameras tick within the same 10 ms`);
  assert.ok(new Set(phases).size >= 90, `${new Set(phases).size} distinct phases`);
});

test('the next tick is the first slot of the phase after now', () => {
  assert.equal(nextTickAt(10_000, 1000, 250), 10_250);
  assert.equal(nextTickAt(10_250, 1000, 250), 11_250, 'strictly after');
  assert.equal(nextTickAt(10_249, 1000, 250), 10_250);
  assert.equal(nextTickAt(10_999, 1000, 0), 11_000);
});

test('a schedule ticks once per slot on its phase, even when a timer seems to fire early', async () => {
  // jitter: every other reading of the clock is 3 ms behind, as when the event loop's timer clock and
  // Date.now() disagree, so some timers fire (by the schedule's clock) just before their slot.
  for (const jitter of [0, 3]) {
    // Long enough that a timer late by a loaded machine (tens of ms) still rounds to its own slot.
    const interval = 200;
    const phase = 17;
    let reads = 0;
    const now = () => Date.now() - (reads++ % 2 ? jitter : 0);
    const ticks = [];
    const schedule = new TickSchedule(interval, phase, () => ticks.push(Date.now()), now);
    schedule.start();
    await sleep(interval * 12);
    schedule.stop();
    const count = ticks.length;
    await sleep(interval * 2);
    assert.equal(ticks.length, count, 'nothing after stop');
    assert.ok(count >= 8, `${count} ticks in 12 intervals`);
    const slots = ticks.map((t) => Math.round((t - phase) / interval));
    for (let i = 1; i < slots.length; i++) assert.ok(slots[i] > slots[i - 1], `one tick per slot (jitter ${jitter}): ${slots.join(',')}`);
    const past = ticks.map((t) => pastPhase(t, phase, interval));
    assert.ok(past.filter((o) => o >= -1 && o < 80).length >= count - 1, `ticks land on their slots: ${past.join(',')}`);
  }
});

test('the status of many cameras counts them, names those offline, and adds up their rates', () => {
  const cam = (id, health) => ({ id, health, meter: new RateMeter() });
  assert.deepEqual(summariseCameras([cam('a', 'online'), cam('b', 'online')]), { fill: 'green', shape: 'dot', text: '2 cameras · 2 online · 0.0 fps' });
  assert.deepEqual(summariseCameras([cam('a', 'online'), cam('b', 'offline'), cam('c', 'starting')]),
    { fill: 'yellow', shape: 'ring', text: '3 cameras · 1 online · offline: b · 1 starting · 0.0 fps' });
  assert.deepEqual(summariseCameras(['a', 'b', 'c', 'd', 'e'].map((id) => cam(id, 'offline'))),
    { fill: 'red', shape: 'ring', text: '5 cameras · 0 online · offline: a, b, c +2 · 0.0 fps' });
  const busy = cam('a', 'online');
  for (let t = 0; t <= 10_000; t += 500) busy.meter.tick(t);
  assert.equal(summariseCameras([busy, cam('b', 'finished')], 10_000).text, '2 cameras · 1 online · 1 finished · 2.1 fps');
});


test('live sources connect at deploy: RTSP, MJPEG and V4L2 devices, by number or by their stable /dev/v4l names', () => {
  for (const source of ['rtsp://10.0.0.21/stream1', 'http://cam/video.mjpg', '/dev/video0', '/dev/v4l/by-id/usb-046d_HD_Pro_Webcam_C920-video-index0', '/dev/v4l/by-path/platform-xhci-hcd.0-usb-0:1:1.0-video-index0']) {
    assert.equal(isLiveSetting('auto', source), true, source);
  }
  for (const source of ['/data/photos', 'http://cam/snapshot.jpg', '']) assert.equal(isLiveSetting('auto', source), false, source);
  assert.equal(isLiveSetting('v4l2', '/dev/v4l/by-id/x'), true);
});
