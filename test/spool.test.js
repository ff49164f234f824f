// The disk spool on its own: order and limits across reopens, what a power cut, an operator or a
// damaged disk leaves behind, the folder lock, expiry, and the drainer's retries and dead letters.
// Power cuts are reproduced by writing what an interrupted append leaves (a cut record, zeros);
// every damaged file must be set aside and the spool must go on, never throw at open.
const { test } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('fs');
const path = require('path');
const { spawnSync } = require('child_process');
const { tmpDir, sleep, until } = require('./helpers');
const { DiskSpool, SpoolDrainer, RefusedError, LOCK_REFRESH_MS, LOCK_STALE_MS } = require('../nodes/greengrass-connection/spool');

const LIMITS = { maxMessages: 1000, maxBytes: 1e9 };
const message = (n, extra = {}) => ({ topic: `t/${n}`, payload: JSON.stringify({ n }), qos: 1, at: n, ...extra });

async function openSpool(dir, limits = LIMITS) {
  const spool = new DiskSpool(dir, limits);
  const warnings = [];
  spool.onWarning = (text) => warnings.push(text);
  await spool.open();
  return { spool, warnings };
}

async function drainAll(spool) {
  const seen = [];
  for (let head = await spool.peek(); head; head = await spool.peek()) {
    seen.push(typeof head.payload === 'string' ? JSON.parse(head.payload).n : head.payload);
    await spool.remove(head.seq);
  }
  return seen;
}

const segments = (dir) => fs.readdirSync(dir).filter((f) => f.endsWith('.log')).sort();
const quarantined = (dir) => (fs.existsSync(path.join(dir, 'quarantine')) ? fs.readdirSync(path.join(dir, 'quarantine')) : []);

test('order survives a reopen; when full the oldest go first, by count and by bytes', async () => {
  const dir = tmpDir('spool-');
  const { spool } = await openSpool(dir, { maxMessages: 3, maxBytes: 1e9 });
  for (let i = 1; i <= 5; i++) await spool.push({ topic: `t/${i}`, payload: i % 2 ? `{"n":${i}}` : Buffer.from([i]), qos: 1, at: i });
  assert.equal(spool.length, 3);
  assert.equal(spool.dropped, 2);
  await spool.close();

  const { spool: reopened } = await openSpool(dir, { maxMessages: 3, maxBytes: 1e9 });
  const seen = [];
  for (let head = await reopened.peek(); head; head = await reopened.peek()) {
    seen.push([head.topic, head.payload]);
    await reopened.remove(head.seq);
  }
  assert.deepEqual(seen, [['t/3', '{"n":3}'], ['t/4', Buffer.from([4])], ['t/5', '{"n":5}']]);
  await reopened.close();
  assert.deepEqual(fs.readdirSync(dir), [], 'an emptied spool leaves a clean folder');

  const { spool: small } = await openSpool(tmpDir('spool-'), { maxMessages: 100, maxBytes: 600 });
  for (let i = 0; i < 10; i++) await small.push({ topic: 't', payload: 'x'.repeat(100), qos: 1, at: i });
  assert.ok(small.bytes <= 600 && small.dropped > 0, `${small.bytes} bytes kept, ${small.dropped} dropped`);
  await small.close();
});

test('many writes at once are all accepted, stored once each, and come back in order', async () => {
  const dir = tmpDir('spool-');
  const { spool } = await openSpool(dir, { maxMessages: 10_000, maxBytes: 1e9 });
  await Promise.all(Array.from({ length: 2000 }, (_, i) => spool.push(message(i + 1))));
  await spool.close();
  const { spool: reopened } = await openSpool(dir, { maxMessages: 10_000, maxBytes: 1e9 });
  assert.equal(reopened.length, 2000);
  assert.deepEqual(await drainAll(reopened), Array.from({ length: 2000 }, (_, i) => i + 1));
  await reopened.close();
});

test('a record cut short by a power cut is set aside; the records before it are kept', async () => {
  const dir = tmpDir('spool-');
  const { spool } = await openSpool(dir);
  for (let i = 1; i <= 3; i++) await spool.push(message(i));
  await spool.close();
  const [segment] = segments(dir);
  const file = path.join(dir, segment);
  const whole = fs.readFileSync(file);
  fs.writeFileSync(file, whole.subarray(0, whole.length - 7)); // the third append was torn

  const { spool: reopened, warnings } = await openSpool(dir);
  assert.equal(reopened.length, 2);
  assert.equal(reopened.quarantined, 1);
  assert.match(warnings.join('\n'), /the last record is cut short at byte \d+ .* the 2 records before it are kept/);
  assert.equal(quarantined(dir).length, 1);
  await reopened.push(message(4));
  assert.deepEqual(await drainAll(reopened), [1, 2, 4]);
  await reopened.close();
});

test('zeros where a record should be (a power cut after the size grew) and a flipped byte are set aside', async () => {
  const dir = tmpDir('spool-');
  const { spool } = await openSpool(dir);
  for (let i = 1; i <= 4; i++) await spool.push(message(i));
  await spool.close();
  const file = path.join(dir, segments(dir)[0]);
  const whole = fs.readFileSync(file);
  const recordBytes = whole.length / 4;
  const flipped = Buffer.from(whole);
  flipped[Math.floor(recordBytes * 2.5)] ^= 0x20; // inside the third record's JSON
  fs.writeFileSync(file, Buffer.concat([flipped, Buffer.alloc(64)]));

  const { spool: reopened, warnings } = await openSpool(dir);
  assert.match(warnings.join('\n'), /fails its checksum/);
  assert.deepEqual(await drainAll(reopened), [1, 2]);
  await reopened.close();
});

test('files of the one-file-per-message format are imported; empty, invalid and mistyped ones are set aside', async () => {
  const dir = tmpDir('spool-');
  const legacy = (name, content) => fs.writeFileSync(path.join(dir, name), content);
  legacy('00000000000001.msg', JSON.stringify({ topic: 't/1', qos: 1, encoding: 'utf8', payload: '{"n":1}', at: 1 }));
  legacy('00000000000002.msg', '');
  legacy('00000000000003.msg', '{"topic": "t/3", "qos"');
  legacy('00000000000004.msg', JSON.stringify({ topic: 7, qos: 'x', encoding: 'utf8', payload: {} }));
  legacy('00000000000005.msg', JSON.stringify({ topic: 't/5', qos: 0, encoding: 'base64', payload: Buffer.from([5]).toString('base64'), at: 5 }));
  legacy('00000000000006.msg', '[1, 2, 3]');
  const { spool, warnings } = await openSpool(dir);
  assert.equal(spool.length, 2);
  assert.equal(spool.quarantined, 4);
  assert.match(warnings.join('\n'), /00000000000002\.msg is not a readable spooled message \(the file is empty\)/);
  assert.match(warnings.join('\n'), /00000000000004\.msg .*expected topic to be a non-empty string but received 7/);
  assert.deepEqual(await drainAll(spool), [1, Buffer.from([5])]);
  assert.equal(fs.readdirSync(dir).filter((f) => f.endsWith('.msg')).length, 0);
  assert.equal(quarantined(dir).length, 4);
  await spool.close();
});

test('a segment name past 2^53 or not a number is set aside, not trusted', async () => {
  const dir = tmpDir('spool-');
  fs.writeFileSync(path.join(dir, '99999999999999999999.log'), 'whatever');
  fs.writeFileSync(path.join(dir, 'notes.log'), 'an operator wrote here');
  const { spool } = await openSpool(dir);
  assert.equal(spool.quarantined, 2);
  await spool.push(message(1));
  assert.deepEqual(await drainAll(spool), [1]);
  await spool.close();
});

test('a damaged delivery mark means messages may go again, never that they are lost', async () => {
  const dir = tmpDir('spool-');
  const { spool } = await openSpool(dir);
  for (let i = 1; i <= 3; i++) await spool.push(message(i));
  const head = await spool.peek();
  await spool.remove(head.seq);
  await spool.close();
  assert.equal(JSON.parse(fs.readFileSync(path.join(dir, 'delivered'), 'utf8')).seq, 1);
  fs.writeFileSync(path.join(dir, 'delivered'), '{"seq": "garbage"');
  const { spool: reopened, warnings } = await openSpool(dir);
  assert.match(warnings.join('\n'), /delivery mark delivered is damaged .* may be sent again/);
  assert.deepEqual(await drainAll(reopened), [1, 2, 3]);
  await reopened.close();
});

test('segments an operator deletes during an outage are skipped and counted; later messages still go', async () => {
  const dir = tmpDir('spool-');
  // No memory copies: every message is read back from its segment, as after a restart.
  const { spool } = await openSpool(dir, { ...LIMITS, memoryBytes: 0 });
  for (let i = 1; i <= 3; i++) await spool.push(message(i));
  for (const name of segments(dir)) fs.rmSync(path.join(dir, name));
  const head = await spool.peek();
  assert.equal(head, undefined);
  assert.equal(spool.lost, 3);
  await spool.push(message(4));
  assert.deepEqual(await drainAll(spool), [4]);
  await spool.close();
});

test('messages within the memory budget are sent from memory; past it, and after a reopen, they are read back from disk', async () => {
  const dir = tmpDir('spool-');
  const recordBytes = 8 + Buffer.byteLength(JSON.stringify({ seq: 1, topic: 't/1', qos: 1, at: 1, encoding: 'utf8', payload: '{"n":1}' }));
  const { spool } = await openSpool(dir, { ...LIMITS, memoryBytes: recordBytes * 2 });
  for (let i = 1; i <= 4; i++) await spool.push(message(i));
  // With the segment gone, only what memory holds can still be sent: the first two.
  for (const name of segments(dir)) fs.rmSync(path.join(dir, name));
  const run = await spool.peekAfter(0, 10);
  assert.deepEqual(run.map((m) => JSON.parse(m.payload).n), [1, 2], 'the run stops before the first message that must come from disk');
  for (const m of run) await spool.remove(m.seq);
  assert.equal(await spool.peek(), undefined);
  assert.equal(spool.lost, 2, 'the two on disk only are lost with their segment');
  await spool.push(message(5));
  await spool.close();

  const { spool: reopened } = await openSpool(dir);
  assert.deepEqual(await drainAll(reopened), [5], 'after a reopen everything comes from disk');
  await reopened.close();
});

test('a message can be sent while it is being written; confirmed before the write ends, it is not sent again after a reopen', async () => {
  const dir = tmpDir('spool-');
  const { spool } = await openSpool(dir);
  const stored = spool.push(message(1));
  // Not on disk yet, already available to send (a broker that has it makes the disk write moot).
  const [head] = await spool.peekAfter(0, 5);
  assert.equal(JSON.parse(head.payload).n, 1);
  await spool.remove(head.seq);
  assert.equal(spool.length, 0);
  await stored;
  assert.equal(spool.length, 0, 'the finished write does not bring it back');
  assert.equal(spool.bytes, 0);
  await spool.push(message(2));
  await spool.close();
  const { spool: reopened } = await openSpool(dir);
  assert.deepEqual(await drainAll(reopened), [2]);
  await reopened.close();
});

test('a segment that cannot be read loses only the messages not also held in memory', async () => {
  const dir = tmpDir('spool-');
  const { spool } = await openSpool(dir, { ...LIMITS, memoryBytes: 200 });
  await spool.push({ topic: 'big', payload: 'x'.repeat(500), qos: 1, at: 1 }); // over the budget: on disk only
  await spool.push({ topic: 'small', payload: 'y', qos: 1, at: 2 });
  for (const name of segments(dir)) fs.rmSync(path.join(dir, name));
  const run = await spool.peekAfter(0, 10);
  assert.deepEqual(run.map((m) => m.topic), ['small']);
  assert.equal(spool.lost, 1);
  await spool.close();
});

test('drainer: a pass that fails (a delivered segment cannot be deleted) is retried and delivers the rest; late confirmations after close change nothing', async () => {
  const dir = tmpDir('spool-');
  const { spool, warnings } = await openSpool(dir);
  await spool.push({ topic: 'A', payload: 'x'.repeat(4.2e6), qos: 1, at: 1 }); // fills the first segment
  await spool.push(message(2));
  await spool.push(message(3));
  const realRm = fs.promises.rm;
  let failOnce = true;
  fs.promises.rm = async (file, options) => {
    if (failOnce && String(file).endsWith('.log')) {
      failOnce = false;
      throw Object.assign(new Error('EIO: i/o error'), { code: 'EIO' });
    }
    return realRm(file, options);
  };
  try {
    const sent = [];
    const drainer = new SpoolDrainer(spool, async (m) => { sent.push(m.topic); }, () => true, {}, { minRetryMs: 20, maxRetryMs: 40 });
    drainer.start();
    await until(() => spool.length === 0, 5000, 'every message delivered without new traffic');
    assert.deepEqual(sent, ['A', 't/2', 't/3']);
    assert.match(warnings.join('\n'), /cannot delete the delivered segment .*EIO/);
    drainer.stop();
  } finally {
    fs.promises.rm = realRm;
  }
  await spool.push(message(4));
  const [four] = await spool.peekAfter(0, 1);
  await spool.close();
  await spool.remove(four.seq); // a PUBACK arriving after the connection closed the spool
  const { spool: reopened } = await openSpool(dir);
  assert.deepEqual(await drainAll(reopened), [4], 'the late confirmation did not count: it goes again (at least once)');
  await reopened.close();
});

test('drainer: a message that arrives while the window is full waits for room (it froze the process before)', () => {
  // In a child process: the fault was a microtask loop, which stops this process's timers too.
  const script = `
    const { DiskSpool, SpoolDrainer } = require(${JSON.stringify(require.resolve('../nodes/greengrass-connection/spool'))});
    (async () => {
      const spool = new DiskSpool(${JSON.stringify(tmpDir('spool-'))}, { maxMessages: 1000, maxBytes: 1e9 });
      await spool.open();
      const sent = [];
      const drainer = new SpoolDrainer(spool, (m) => new Promise((r) => setTimeout(() => { sent.push(m.topic); r(); }, 30)), () => true, {}, { window: 2 });
      drainer.start();
      for (const topic of ['t/1', 't/2']) drainer.submit({ topic, payload: 'x', qos: 1, at: 1 });
      setTimeout(() => drainer.submit({ topic: 't/3', payload: 'x', qos: 1, at: 2 }), 10); // the window is full by then
      setTimeout(() => { process.stdout.write(JSON.stringify({ sent, left: spool.length })); process.exit(0); }, 1000);
    })();`;
  const child = spawnSync(process.execPath, ['-e', script], { timeout: 10_000, encoding: 'utf8' });
  assert.equal(child.signal, null, 'the drainer must not freeze the process');
  assert.deepEqual(JSON.parse(child.stdout), { sent: ['t/1', 't/2', 't/3'], left: 0 });
});

test('drainer: up to a window of messages in flight, sent in order; only unconfirmed ones are sent again after link trouble', async () => {
  const dir = tmpDir('spool-');
  const { spool } = await openSpool(dir);
  const attempts = new Map();
  const sendOrder = [];
  const confirmedOrder = [];
  let inFlight = 0;
  let mostInFlight = 0;
  let failN = 3;
  const drainer = new SpoolDrainer(spool, async (m) => {
    const { n } = JSON.parse(m.payload);
    attempts.set(n, (attempts.get(n) ?? 0) + 1);
    sendOrder.push(n);
    inFlight++;
    mostInFlight = Math.max(mostInFlight, inFlight);
    await sleep(5); // one broker round trip
    inFlight--;
    if (n === failN) {
      failN = 0;
      throw new Error('connection reset');
    }
    confirmedOrder.push(n);
  }, () => true, {}, { window: 4, minRetryMs: 20, maxRetryMs: 40 });
  for (let i = 1; i <= 10; i++) await spool.push(message(i));
  drainer.start();
  await until(() => spool.length === 0, 5000, 'every message delivered');
  assert.equal(mostInFlight, 4, 'up to the window in flight at once');
  assert.deepEqual([...attempts.keys()].sort((a, b) => a - b), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
  assert.equal(attempts.get(3), 2, 'the failed one went again');
  assert.equal(attempts.get(4), 1, 'the one confirmed behind it did not');
  const firstAttempts = sendOrder.filter((n, i) => sendOrder.indexOf(n) === i);
  assert.deepEqual(firstAttempts, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 'first sent in spool order');
  assert.deepEqual([...confirmedOrder].sort((a, b) => a - b), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 'each confirmed once');
  // What was in flight behind the failed one may arrive before its second attempt (as with any MQTT in-flight window).
  assert.ok(confirmedOrder.indexOf(3) > confirmedOrder.indexOf(4));
  drainer.stop();
  await spool.close();
});

test('one folder, one owner: a second spool is refused by name, a dead owner\'s lock is taken over', async () => {
  const dir = tmpDir('spool-');
  const { spool } = await openSpool(dir);
  await assert.rejects(new DiskSpool(dir, LIMITS).open(), /already used by another connection in this Node-RED .* give each connection its own spool folder/);
  await spool.close();

  // A lock held by a live process elsewhere on this host (this test's parent) is respected.
  fs.writeFileSync(path.join(dir, 'spool.lock'), JSON.stringify({ pid: process.ppid, host: require('os').hostname(), since: 'earlier' }));
  await assert.rejects(new DiskSpool(dir, LIMITS).open(), new RegExp(`in use by process ${process.ppid}`));

  // The lock of a process that has ended (a power cut, a kill -9) is taken over with a warning.
  const ended = spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))']).stdout.toString();
  fs.writeFileSync(path.join(dir, 'spool.lock'), JSON.stringify({ pid: Number(ended), host: require('os').hostname(), since: 'earlier' }));
  const { spool: taken, warnings } = await openSpool(dir);
  assert.match(warnings.join('\n'), new RegExp(`took over the spool folder .* from process ${ended}`));
  await taken.close();
  assert.ok(!fs.existsSync(path.join(dir, 'spool.lock')));
});

test('a lock from before a reboot, or one its owner stopped refreshing, is taken over; a fresh one from another host is not', async () => {
  const os = require('os');
  const dir = tmpDir('spool-');
  const lock = path.join(dir, 'spool.lock');
  const bootId = fs.readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
  const writeLock = (holder, idleMs = 0) => {
    fs.writeFileSync(lock, JSON.stringify({ since: 'earlier', ...holder }));
    const at = new Date(Date.now() - idleMs);
    fs.utimesSync(lock, at, at);
  };
  // After a power cut the old pid may be taken by another process (here: this test's parent, alive).
  writeLock({ pid: process.ppid, host: os.hostname(), boot: 'an-earlier-boot' });
  let opened = await openSpool(dir);
  assert.match(opened.warnings.join('\n'), new RegExp(`from process ${process.ppid}: it ran before this machine restarted`));
  const written = JSON.parse(fs.readFileSync(lock, 'utf8'));
  assert.deepEqual([written.pid, written.host, written.boot], [process.pid, os.hostname(), bootId], 'our lock names host, boot and pid');
  await opened.spool.close();

  // The same boot and a live pid: in use, unless the owner has not touched its lock for a while.
  writeLock({ pid: process.ppid, host: os.hostname(), boot: bootId });
  await assert.rejects(new DiskSpool(dir, LIMITS).open(), new RegExp(`in use by process ${process.ppid}`));
  writeLock({ pid: process.ppid, host: os.hostname(), boot: bootId }, LOCK_STALE_MS + 5000);
  opened = await openSpool(dir);
  assert.match(opened.warnings.join('\n'), /its lock was last refreshed \d+ s ago/);
  await opened.spool.close();

  // Another host (a second device on a shared folder, or this container before it was recreated):
  // its pids mean nothing here, so only the refresh tells.
  writeLock({ pid: 1, host: 'another-host', boot: bootId });
  await assert.rejects(new DiskSpool(dir, LIMITS).open(), /in use by process 1 on another-host since earlier/);
  writeLock({ pid: 1, host: 'another-host', boot: bootId }, LOCK_STALE_MS + 5000);
  opened = await openSpool(dir);
  assert.match(opened.warnings.join('\n'), /from process 1: its lock was last refreshed/);
  await opened.spool.close();
});

test('pids compare only within one pid namespace; a half-written lock is in use until it is old', async () => {
  const os = require('os');
  const dir = tmpDir('spool-');
  const lock = path.join(dir, 'spool.lock');
  const bootId = fs.readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
  const writeLock = (content, idleMs = 0) => {
    fs.writeFileSync(lock, content);
    const at = new Date(Date.now() - idleMs);
    fs.utimesSync(lock, at, at);
  };
  const ended = Number(spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))']).stdout.toString());
  // Another container with the same host name: its pid (ours, or one that does not exist here) says nothing.
  for (const pid of [process.pid, ended]) {
    writeLock(JSON.stringify({ pid, host: os.hostname(), boot: bootId, pidns: 'pid:[1]', since: 'earlier' }));
    await assert.rejects(new DiskSpool(dir, LIMITS).open(), new RegExp(`in use by process ${pid}`));
  }
  // The same pid namespace: the pid tells at once.
  const pidns = fs.readlinkSync('/proc/self/ns/pid');
  writeLock(JSON.stringify({ pid: ended, host: os.hostname(), boot: bootId, pidns, since: 'earlier' }));
  let opened = await openSpool(dir);
  assert.match(opened.warnings.join('\n'), new RegExp(`from process ${ended}: it has ended`));
  await opened.spool.close();
  // A lock cut short (an older version's crash while writing it, or one being written).
  writeLock('{"pid": 12');
  await assert.rejects(new DiskSpool(dir, LIMITS).open(), /in use by process undefined/);
  writeLock('{"pid": 12', LOCK_STALE_MS + 5000);
  opened = await openSpool(dir);
  assert.match(opened.warnings.join('\n'), /from process \?: its lock file is unreadable/);
  await opened.spool.close();
  assert.deepEqual(fs.readdirSync(dir).filter((f) => f.startsWith('spool.lock')), [], 'nothing left of the locks');
});

test('a lock deleted while in use is made again; one another process took over is left to it, with a warning', async (t) => {
  t.mock.timers.enable({ apis: ['setInterval'] });
  const dir = tmpDir('spool-');
  const lock = path.join(dir, 'spool.lock');
  const { spool, warnings } = await openSpool(dir);
  const ours = fs.readFileSync(lock, 'utf8');
  fs.rmSync(lock);
  t.mock.timers.tick(LOCK_REFRESH_MS);
  await until(() => fs.existsSync(lock), 2000, 'the lock made again');
  assert.equal(fs.readFileSync(lock, 'utf8'), ours);
  const theirs = JSON.stringify({ pid: 1, host: 'another-host', since: 'later' });
  fs.writeFileSync(lock, theirs);
  t.mock.timers.tick(LOCK_REFRESH_MS);
  await until(() => warnings.some((w) => /another process took over the spool folder/.test(w)), 2000, 'the warning');
  t.mock.timers.tick(LOCK_REFRESH_MS);
  await sleep(50);
  assert.equal(warnings.filter((w) => /another process took over/.test(w)).length, 1, 'said once');
  await spool.close();
  assert.equal(fs.readFileSync(lock, 'utf8'), theirs, 'their lock is not removed at close');
});

test('the owner refreshes its lock while the spool is open', async (t) => {
  t.mock.timers.enable({ apis: ['setInterval'] });
  const dir = tmpDir('spool-');
  const lock = path.join(dir, 'spool.lock');
  const { spool } = await openSpool(dir);
  const old = new Date(Date.now() - LOCK_STALE_MS - 5000);
  fs.utimesSync(lock, old, old);
  t.mock.timers.tick(LOCK_REFRESH_MS);
  await until(() => Date.now() - fs.statSync(lock).mtimeMs < LOCK_STALE_MS, 2000, 'the lock touched again');
  await assert.rejects(new DiskSpool(dir, LIMITS).open(), /already used by another connection in this Node-RED/);
  await spool.close();
  assert.ok(!fs.existsSync(lock));
});

test('expired messages are dropped unsent and counted', async () => {
  const { spool } = await openSpool(tmpDir('spool-'));
  const now = Date.now();
  await spool.push(message(1, { expiresAt: now - 1 }));
  await spool.push(message(2, { expiresAt: now + 60_000 }));
  await spool.push(message(3, { expiresAt: now - 1 }));
  await spool.push(message(4));
  assert.deepEqual(await drainAll(spool), [2, 4]);
  assert.equal(spool.expired, 2);
  await spool.close();
});

test('drainer: a refused message is set aside after three tries and the rest go on; link trouble is retried without new traffic', async () => {
  const dir = tmpDir('spool-');
  const { spool } = await openSpool(dir);
  const delivered = [];
  const deadLetters = [];
  let up = true;
  let failNext = 0;
  let attemptsOn2 = 0;
  const drainer = new SpoolDrainer(spool, async (m) => {
    const { n } = JSON.parse(m.payload);
    if (failNext > 0) {
      failNext--;
      throw new Error('connection reset');
    }
    if (n === 2) {
      attemptsOn2++;
      throw new RefusedError('PUBACK reason 135 (not authorized)');
    }
    delivered.push(n);
  }, () => up, { onDeadLetter: (m, reason, file) => deadLetters.push({ n: JSON.parse(m.payload).n, reason, file }) }, { minRetryMs: 20, maxRetryMs: 40 });
  drainer.start();
  for (let i = 1; i <= 4; i++) await drainer.submit(message(i));
  // The ones behind it may be confirmed before it is given up on (they go out together).
  await until(() => delivered.length === 3 && deadLetters.length === 1, 5000, 'the messages behind the refused one');
  assert.deepEqual(delivered, [1, 3, 4]);
  assert.equal(attemptsOn2, 3);
  assert.equal(deadLetters.length, 1);
  assert.equal(deadLetters[0].reason, 'PUBACK reason 135 (not authorized)');
  const letter = JSON.parse(fs.readFileSync(deadLetters[0].file, 'utf8'));
  assert.equal(letter.topic, 't/2');
  assert.equal(letter.payload, '{"n":2}');
  assert.equal(spool.deadLettered, 1);

  // Two failed sends, then nothing new arrives: the retry timer alone must deliver it.
  failNext = 2;
  await drainer.submit(message(5));
  await until(() => delivered.includes(5), 5000, 'a retry after link trouble');

  // Stopped (the last user left) and started again (a Modified Flows deploy): delivery resumes.
  drainer.stop();
  up = false;
  await drainer.submit(message(6));
  await sleep(100);
  assert.ok(!delivered.includes(6));
  up = true;
  drainer.start();
  await until(() => delivered.includes(6), 5000, 'delivery after a restart of the drainer');
  drainer.stop();
  await spool.close();
});
