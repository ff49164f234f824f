/**
 * The life of a config node's shared resource (a model session, a connection), as Node-RED's MQTT
 * broker node manages its client: started by the first user that registers; a user that is only
 * redeployed (`removed` false) leaves it running, since the same user registers again a moment
 * later; it stops when the last user is really removed, when the config node itself closes, or
 * when no user has come back within a grace period (a user moved to another config node).
 * Start and stop may alternate any number of times.
 */
import type { Node } from './red-types';

export interface SharedResourceNode extends Node {
  register(user: Node): void;
  /** `removed`: the user was deleted from the flows (the `removed` argument of its close handler). */
  deregister(user: Node, done: () => void, removed?: boolean): void;
}

/** How long a resource with no users stays up after its users were redeployed rather than removed. */
export const IDLE_GRACE_MS = 30_000;

export function shareAmongUsers(node: SharedResourceNode, start: () => void, stop: () => Promise<void>, idleGraceMs = IDLE_GRACE_MS): void {
  const users = new Set<string>();
  /** Users that left in a redeploy (not removed) and have not registered again yet. */
  const returning = new Set<string>();
  let running = false;
  let closed = false;
  let idleTimer: NodeJS.Timeout | undefined;
  let stopping: Promise<void> | undefined;

  const stopNow = (): Promise<void> => {
    clearTimeout(idleTimer);
    idleTimer = undefined;
    if (!running) return stopping ?? Promise.resolve();
    running = false;
    const done = stop()
      .catch((err) => node.error(`stopping failed: ${err instanceof Error ? err.message : String(err)}`))
      .finally(() => {
        if (stopping === done) stopping = undefined;
      });
    stopping = done;
    return done;
  };

  node.register = (user) => {
    users.add(user.id);
    returning.delete(user.id);
    clearTimeout(idleTimer);
    idleTimer = undefined;
    if (running || closed) return;
    running = true;
    if (!stopping) return start();
    // A stop still finishing (the folder lock, a socket) must be over before the next start.
    stopping.then(() => {
      if (running && !closed) start();
    });
  };

  node.deregister = (user, done, removed = true) => {
    users.delete(user.id);
    if (removed) returning.delete(user.id);
    else returning.add(user.id);
    if (users.size > 0 || !running) return done();
    // The last user deleted stops it at once, unless one redeployed in the same deploy (whose close
    // may have come first) is about to come back.
    if (removed && returning.size === 0) {
      stopNow().then(() => done());
      return;
    }
    clearTimeout(idleTimer);
    idleTimer = setTimeout(() => {
      idleTimer = undefined;
      returning.clear(); // (moved to another config node, or not deployed again)
      if (users.size === 0) stopNow();
    }, idleGraceMs);
    idleTimer.unref();
    done();
  };

  node.on('close', (_removed: boolean, done: () => void) => {
    closed = true;
    users.clear();
    returning.clear();
    stopNow().then(() => done());
  });
}
