/**
 * One capture at a time, each with an overall deadline. Without the deadline a snapshot server that
 * trickles a byte every 300 ms never trips the idle timeout, holds the capture forever, and every
 * later tick is skipped in silence.
 */
export class CaptureBusy extends Error {}
export class CaptureDeadlineExceeded extends Error {}

export class CaptureGuard {
  private running?: { startedAt: number; controller: AbortController };
  /** Ticks skipped since the running capture started (0 when none is running). */
  skippedWhileBusy = 0;
  /** Ticks skipped since deploy. */
  skippedTotal = 0;

  constructor(readonly deadlineMs: number) {}

  /** How long the running capture has taken so far; undefined when none runs. */
  busyForMs(now = Date.now()): number | undefined {
    return this.running ? now - this.running.startedAt : undefined;
  }

  /**
   * Runs one capture. Throws CaptureBusy when one is already running (the caller counts it as a
   * skipped tick), or CaptureDeadlineExceeded after deadlineMs, having aborted `work` through its signal.
   * @param describe what is being captured, for the deadline error (e.g. the camera URL)
   */
  async run<T>(describe: () => string, work: (signal: AbortSignal) => Promise<T>): Promise<T> {
    if (this.running) {
      this.skippedWhileBusy++;
      this.skippedTotal++;
      throw new CaptureBusy(`a capture has been running for ${this.busyForMs()} ms`);
    }
    const controller = new AbortController();
    this.running = { startedAt: Date.now(), controller };
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        const skipped = this.skippedWhileBusy ? `; ${this.skippedWhileBusy} ticks were skipped meanwhile` : '';
        const err = new CaptureDeadlineExceeded(`capture from ${describe()} did not finish within the ${this.deadlineMs} ms capture deadline (3 intervals, at least 10 s and the timeout): aborted${skipped}`);
        controller.abort(err);
        reject(err);
      }, this.deadlineMs);
    });
    const working = work(controller.signal);
    // When the deadline wins, the aborted work rejects later: expected, and must not surface as unhandled.
    working.catch(() => undefined);
    try {
      return await Promise.race([working, deadline]);
    } finally {
      clearTimeout(timer);
      this.running = undefined;
      this.skippedWhileBusy = 0;
    }
  }

  /** Aborts the running capture (the node is closing). */
  abort(reason: Error): void {
    this.running?.controller.abort(reason);
  }
}
