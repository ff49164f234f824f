/**
 * When interval cameras tick. Cameras deployed together used to tick in the same millisecond (one
 * setInterval each, all started by the same deploy), so their frames reached the model in bursts.
 * Here every camera ticks on its own phase of the interval: the ticks of camera `id` fall where
 * (time - phaseOffset(id)) is a multiple of the interval, on the wall clock. The phase depends only
 * on the id and the interval, so it is the same across redeploys and restarts, for cameras in one
 * node's list and for separate camera nodes alike, and ticks never drift into step with each other.
 */

/** A stable 32-bit hash of a string (FNV-1a over UTF-8, then murmur3's finaliser to spread close ids). */
export function stableHash(text: string): number {
  let h = 0x811c9dc5;
  for (const byte of Buffer.from(text, 'utf8')) {
    h ^= byte;
    h = Math.imul(h, 0x01000193);
  }
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/** The camera's offset within the interval, in whole ms: stableHash(id) mod intervalMs. */
export function phaseOffset(id: string, intervalMs: number): number {
  const interval = Math.max(1, Math.round(intervalMs));
  return stableHash(id) % interval;
}

/** The first tick time of this phase strictly after `after` (ms on the wall clock). */
export function nextTickAt(after: number, intervalMs: number, phaseMs: number): number {
  const slots = Math.floor((after - phaseMs) / intervalMs) + 1;
  return slots * intervalMs + phaseMs;
}

/**
 * Calls tick() at every slot of its phase, one timer at a time. A late timer never fires twice for
 * the same slot, and one that comes far too late (a blocked event loop, the clock set back or
 * forward) goes on with the next slot after now: every wait is at most one interval.
 */
export class TickSchedule {
  private timer?: NodeJS.Timeout;
  private lastSlot = -Infinity;

  constructor(
    readonly intervalMs: number,
    readonly phaseMs: number,
    private readonly tick: () => void,
    private readonly now: () => number = Date.now,
  ) {}

  get running(): boolean {
    return this.timer !== undefined;
  }

  start(): void {
    this.stop();
    this.arm();
  }

  stop(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
  }

  private arm(): void {
    const now = this.now();
    // The next slot after the one that fired, even when its timer fired a little early (timers run
    // on the event loop's clock, which may be a millisecond behind Date.now()); after a late timer,
    // or the clock set back, the first slot after now.
    const following = this.lastSlot + this.intervalMs;
    const next = nextTickAt(now, this.intervalMs, this.phaseMs);
    const slot = following > next && following - now <= 2 * this.intervalMs ? following : next;
    this.timer = setTimeout(() => {
      this.lastSlot = slot;
      this.arm();
      this.tick();
    }, Math.max(0, slot - now));
  }
}
