/**
 * Runs at most `slots` tasks at once; the rest wait their turn in arrival order. A task may name a
 * lane (a camera): a newer task of the same lane replaces that lane's task still waiting, which is
 * rejected with SupersededError, so that under overload a camera's frames do not pile up and age.
 *
 * With a gate, a lane's task also waits while the gate holds that lane closed: ml-inference closes
 * a camera's lane while its queue for that camera is full, so a frame is decoded only once the
 * model has room for it. Otherwise, under overload, frames were decoded (the bulk of the CPU per
 * frame) only to be dropped by ml-inference for the same camera's next one.
 */
export class SupersededError extends Error {
  readonly superseded = true;
  constructor(lane: string) {
    super(`a newer frame of ${lane} replaced this one while it waited`);
  }
}

/** Lanes that may be closed for a while; listeners hear when one opens. */
export interface LaneGate {
  isOpen(lane: string): boolean;
  onOpen(listener: (lane: string) => void): void;
}

/** A gate closed for a lane while anyone holds it (counted holds; each release is idempotent). */
export class HoldGate implements LaneGate {
  private readonly holds = new Map<string, number>();
  private readonly listeners: ((lane: string) => void)[] = [];

  isOpen(lane: string): boolean {
    return !this.holds.has(lane);
  }

  /** Closes `lane` until the returned function is called. */
  hold(lane: string): () => void {
    this.holds.set(lane, (this.holds.get(lane) ?? 0) + 1);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const left = (this.holds.get(lane) ?? 1) - 1;
      if (left > 0) {
        this.holds.set(lane, left);
        return;
      }
      this.holds.delete(lane);
      for (const listener of this.listeners) listener(lane);
    };
  }

  onOpen(listener: (lane: string) => void): void {
    this.listeners.push(listener);
  }

  /** Lanes held closed now (for tests and diagnostics). */
  get closedLanes(): string[] {
    return [...this.holds.keys()];
  }
}

/**
 * Shared by every ml-preprocess (its decode limiter) and ml-inference node: closed for a camera while
 * an ml-inference node has no room for another frame of it, so that camera's newest frame waits
 * undecoded instead of being decoded only to be dropped.
 */
export const modelRoomGate = new HoldGate();

interface Waiting {
  lane?: string;
  start: () => void;
  supersede: () => void;
}

export class Limiter {
  private running = 0;
  private readonly waiting: Waiting[] = [];

  constructor(readonly slots: number, private readonly gate?: LaneGate) {
    if (!Number.isInteger(slots) || slots < 1) throw new Error(`Expected at least 1 slot but received ${slots}`);
    gate?.onOpen(() => this.startWaiting());
  }

  async run<T>(task: () => Promise<T>, lane?: string): Promise<T> {
    if (this.running < this.slots && this.isOpen(lane)) {
      this.running++;
    } else {
      // Counted as running by whoever starts it (startWaiting).
      await new Promise<void>((start, reject) => {
        if (lane !== undefined) {
          const older = this.waiting.findIndex((w) => w.lane === lane);
          if (older >= 0) this.waiting.splice(older, 1)[0].supersede();
        }
        this.waiting.push({ lane, start, supersede: () => reject(new SupersededError(lane ?? '')) });
      });
    }
    try {
      return await task();
    } finally {
      this.running--;
      this.startWaiting();
    }
  }

  private isOpen(lane: string | undefined): boolean {
    return lane === undefined || !this.gate || this.gate.isOpen(lane);
  }

  /** Starts waiting tasks whose lane is open, in arrival order, while slots are free. */
  private startWaiting(): void {
    for (let i = 0; i < this.waiting.length && this.running < this.slots;) {
      const next = this.waiting[i];
      if (!this.isOpen(next.lane)) {
        i++;
        continue;
      }
      this.waiting.splice(i, 1);
      this.running++;
      next.start();
    }
  }
}
