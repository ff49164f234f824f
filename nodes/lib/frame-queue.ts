/**
 * A bounded wait list in front of a slow consumer (the model). Policies:
 *  - latest: keep only the newest `capacity` waiting items, dropping the oldest (fresh frames win);
 *  - oldest: keep the first `capacity` waiting items, dropping new arrivals (nothing reorders).
 */
export type QueuePolicy = 'latest' | 'oldest';

export class FrameQueue<T> {
  private readonly items: T[] = [];

  constructor(readonly policy: QueuePolicy, readonly capacity: number) {
    if (!Number.isInteger(capacity) || capacity < 1) throw new Error(`queue capacity must be a whole number of at least 1, got ${capacity}`);
  }

  get length(): number {
    return this.items.length;
  }

  /** Adds an item; returns the item that had to be dropped to stay within capacity, if any. */
  offer(item: T): T | undefined {
    if (this.items.length < this.capacity) {
      this.items.push(item);
      return undefined;
    }
    if (this.policy === 'oldest') return item;
    const dropped = this.items.shift();
    this.items.push(item);
    return dropped;
  }

  take(): T | undefined {
    return this.items.shift();
  }

  drain(): T[] {
    return this.items.splice(0, this.items.length);
  }
}

/** Frames per second over a sliding window of completion times. */
export class RateMeter {
  private readonly stamps: number[] = [];
  constructor(private readonly windowMs = 10_000) {}

  tick(now = Date.now()): void {
    this.stamps.push(now);
    this.trim(now);
  }

  rate(now = Date.now()): number {
    this.trim(now);
    if (this.stamps.length < 2) return 0;
    const span = (now - this.stamps[0]) / 1000;
    return span > 0 ? this.stamps.length / Math.max(span, 1) : 0;
  }

  private trim(now: number): void {
    while (this.stamps.length && now - this.stamps[0] > this.windowMs) this.stamps.shift();
  }
}
