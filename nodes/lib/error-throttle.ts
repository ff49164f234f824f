/**
 * Raises the same error at most once per window: a node that fails on every tick of a fast timer
 * would otherwise flood the log and every Catch node (a missing folder at 1 ms raised ~900 errors/s).
 * Repeats inside the window are counted, so the node can show "folder missing (x37)" in its status.
 */
export interface ThrottleDecision {
  /** True for the first occurrence and then at most once per window: raise it (node.error / done(err)). */
  raise: boolean;
  /** Occurrences of this error in the current run of it, this one included (for the status: "(x37)"). */
  count: number;
  /** Repeats that were not raised since this error was last raised (set when raise is true). */
  suppressedSinceRaised: number;
}

interface Entry {
  lastRaisedAt: number;
  lastSeenAt: number;
  count: number;
  suppressed: number;
}

export class ErrorThrottle {
  private readonly entries = new Map<string, Entry>();

  /**
   * @param windowMs at most one raise per error message in this time
   * @param maxKeys distinct messages remembered; the oldest are forgotten beyond it, so memory stays bounded
   */
  constructor(private readonly windowMs = 1000, private readonly maxKeys = 64, private readonly now: () => number = Date.now) {}

  /** Records one occurrence of the error (keyed by its message) and says whether to raise it. */
  check(message: string): ThrottleDecision {
    const now = this.now();
    let entry = this.entries.get(message);
    // An error that has not recurred for a window starts a new run: counted from 1 and raised.
    if (entry && now - entry.lastSeenAt > this.windowMs) entry = undefined;
    if (!entry) {
      this.entries.delete(message);
      this.entries.set(message, { lastRaisedAt: now, lastSeenAt: now, count: 1, suppressed: 0 });
      this.forgetOldest();
      return { raise: true, count: 1, suppressedSinceRaised: 0 };
    }
    entry.lastSeenAt = now;
    entry.count++;
    if (now - entry.lastRaisedAt >= this.windowMs) {
      const suppressedSinceRaised = entry.suppressed;
      entry.lastRaisedAt = now;
      entry.suppressed = 0;
      return { raise: true, count: entry.count, suppressedSinceRaised };
    }
    entry.suppressed++;
    return { raise: false, count: entry.count, suppressedSinceRaised: 0 };
  }

  /** Forgets every error, e.g. after a successful capture or a redeploy. */
  reset(): void {
    this.entries.clear();
  }

  /** Distinct errors remembered (tests check the bound). */
  get size(): number {
    return this.entries.size;
  }

  private forgetOldest(): void {
    while (this.entries.size > this.maxKeys) {
      const oldest = this.entries.keys().next().value as string;
      this.entries.delete(oldest);
    }
  }
}

/** " (x37)" for a repeated error's status text, "" for a first one. */
export function repeatSuffix(count: number): string {
  return count > 1 ? ` (x${count})` : '';
}
