/** Reconnect delays that grow by `factor` after each failure, up to `maxMs`, and restart after a success. */
export class Backoff {
  private current: number;

  constructor(private readonly minMs: number, private readonly maxMs: number, private readonly factor = 1.5) {
    this.current = minMs;
  }

  /** The wait before the next attempt; each call makes the following one longer. */
  next(): number {
    const wait = this.current;
    this.current = Math.min(this.current * this.factor, this.maxMs);
    return wait;
  }

  reset(): void {
    this.current = this.minMs;
  }
}
