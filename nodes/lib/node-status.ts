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
