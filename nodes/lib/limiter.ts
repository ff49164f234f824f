/**
 * Runs at most `slots` tasks at once; the rest wait their turn in arrival order. A task may name a
 * lane (a camera): a newer task of the same lane replaces that lane's task still waiting, which is
 * rejected with SupersededError, so that under overload a camera's frames do not pile up and age.
 */
export class SupersededError extends Error {
  readonly superseded = true;
  constructor(lane: string) {
    super(`a newer frame of ${lane} replaced this one while it waited`);
  }
}

interface Waiting {
  lane?: string;
  start: () => void;
  supersede: () => void;
}

export class Limiter {
  private running = 0;
  private readonly waiting: Waiting[] = [];

  constructor(readonly slots: number) {
    if (!Number.isInteger(slots) || slots < 1) throw new Error(`Expected at least 1 slot but received ${slots}`);
  }

  async run<T>(task: () => Promise<T>, lane?: string): Promise<T> {
    if (this.running >= this.slots) {
      await new Promise<void>((start, reject) => {
        if (lane !== undefined) {
          const older = this.waiting.findIndex((w) => w.lane === lane);
          if (older >= 0) this.waiting.splice(older, 1)[0].supersede();
        }
        this.waiting.push({ lane, start, supersede: () => reject(new SupersededError(lane ?? '')) });
      });
    }
    this.running++;
    try {
      return await task();
    } finally {
      this.running--;
      this.waiting.shift()?.start();
    }
  }
}
