/**
 * One way for every node to show trouble and to fail a message: a red ring status of one length,
 * and `done(err)` so that Catch nodes get the error with the message.
 */
import { DoneFunction, errorMessage, Node } from './red-types';

/** Statuses longer than this are cut (with an ellipsis): long enough for "Expected X but received Y". */
export const STATUS_MAX_CHARS = 100;

export function statusText(text: string): string {
  return text.length > STATUS_MAX_CHARS ? `${text.slice(0, STATUS_MAX_CHARS - 1)}…` : text;
}

export function showError(node: Pick<Node, 'status'>, text: string): void {
  node.status({ fill: 'red', shape: 'ring', text: statusText(text) });
}

/** The input error path: a red status naming the problem, and the error to `done` for Catch nodes. */
export function failMessage(node: Pick<Node, 'status'>, done: DoneFunction, err: unknown): void {
  showError(node, errorMessage(err));
  done(err instanceof Error ? err : new Error(String(err)));
}

type StatusValue = Parameters<Node['status']>[0];

/**
 * Status updates at most every `intervalMs` for what changes with every message: at video rates and
 * with many cameras a status per message costs more than it tells (each one goes to Status nodes and
 * to every open editor). The latest update is shown when the interval is up, so the status never
 * stays behind; `now` shows at once (state changes, errors). Call `stop` on close.
 */
export class StatusThrottle {
  private lastAt = 0;
  private timer?: NodeJS.Timeout;
  private latest?: () => StatusValue;

  constructor(private readonly node: Pick<Node, 'status'>, private readonly intervalMs = 500) {}

  /** The status as a function, so that its text is only built when it is shown. */
  update(status: () => StatusValue): void {
    this.latest = status;
    if (this.timer) return;
    const wait = this.lastAt + this.intervalMs - Date.now();
    if (wait <= 0) return this.showLatest();
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.showLatest();
    }, wait);
    this.timer.unref?.();
  }

  now(status: StatusValue): void {
    this.stop();
    this.lastAt = Date.now();
    this.node.status(status);
  }

  stop(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    this.latest = undefined;
  }

  private showLatest(): void {
    const latest = this.latest;
    this.latest = undefined;
    if (!latest) return;
    this.lastAt = Date.now();
    this.node.status(latest());
  }
}
