// ErrorThrottle (nodes/lib/error-throttle.ts): the same error raised at most once per window, repeats counted.
const { test } = require('node:test');
const assert = require('node:assert/strict');
const { ErrorThrottle, repeatSuffix } = require('../nodes/lib/error-throttle');

/** A throttle on a clock the test moves by hand. */
function throttleAt(windowMs = 1000, maxKeys = 64) {
  const clock = { now: 0 };
  return { clock, throttle: new ErrorThrottle(windowMs, maxKeys, () => clock.now) };
}

test('the first occurrence is raised, repeats within the window are counted but not raised', () => {
  const { clock, throttle } = throttleAt();
  assert.deepEqual(throttle.check('folder missing'), { raise: true, count: 1, suppressedSinceRaised: 0 });
  const repeats = [];
  for (let i = 1; i <= 36; i++) {
    clock.now = i * 10;
    repeats.push(throttle.check('folder missing'));
  }
  assert.ok(repeats.every((d) => !d.raise), 'no repeat is raised within the second');
  assert.equal(repeats[35].count, 37);
  assert.equal(repeatSuffix(repeats[35].count), ' (x37)');
});

test('a repeat after the window is raised again and says how many were suppressed in between', () => {
  const { clock, throttle } = throttleAt();
  throttle.check('camera refused');
  for (let t = 100; t < 1000; t += 100) {
    clock.now = t;
    throttle.check('camera refused');
  }
  clock.now = 1000;
  assert.deepEqual(throttle.check('camera refused'), { raise: true, count: 11, suppressedSinceRaised: 9 });
  clock.now = 1500;
  assert.equal(throttle.check('camera refused').raise, false);
});

test('a steady 1 ms error stream is raised once per second', () => {
  const { clock, throttle } = throttleAt();
  let raised = 0;
  for (clock.now = 0; clock.now < 10_000; clock.now++) if (throttle.check('folder missing').raise) raised++;
  assert.equal(raised, 10);
});

test('different messages are throttled separately', () => {
  const { clock, throttle } = throttleAt();
  assert.equal(throttle.check('a').raise, true);
  assert.equal(throttle.check('b').raise, true);
  clock.now = 10;
  assert.equal(throttle.check('a').raise, false);
  assert.equal(throttle.check('b').raise, false);
});

test('an error that stops for longer than the window starts a new run, counted from one', () => {
  const { clock, throttle } = throttleAt();
  throttle.check('stalled');
  clock.now = 200;
  throttle.check('stalled');
  clock.now = 5000;
  assert.deepEqual(throttle.check('stalled'), { raise: true, count: 1, suppressedSinceRaised: 0 });
});

test('memory stays bounded with many distinct messages, and reset forgets everything', () => {
  const { throttle } = throttleAt(1000, 8);
  for (let i = 0; i < 1000; i++) throttle.check(`error ${i}`);
  assert.equal(throttle.size, 8);
  assert.equal(throttle.check('error 999').raise, false, 'the newest are remembered');
  assert.equal(throttle.check('error 0').raise, true, 'the oldest were forgotten');
  throttle.reset();
  assert.equal(throttle.size, 0);
  assert.equal(repeatSuffix(1), '');
});
