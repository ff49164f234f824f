/**
 * The life of a config node's shared resource (a model session, a connection), as Node-RED's MQTT
 * broker node manages its client: started by the first user that registers, stopped when the last
 * one leaves or when the config node itself closes.
 */
import type { Node } from './red-types';

export interface SharedResourceNode extends Node {
  register(user: Node): void;
  deregister(user: Node, done: () => void): void;
}

export function shareAmongUsers(node: SharedResourceNode, start: () => void, stop: () => Promise<void>): void {
  const users = new Set<string>();
  node.register = (user) => {
    users.add(user.id);
    if (users.size === 1) start();
  };
  node.deregister = (user, done) => {
    users.delete(user.id);
    if (users.size === 0) stop().then(done, done);
    else done();
  };
  node.on('close', (_removed: boolean, done: () => void) => {
    users.clear();
    stop().then(done, done);
  });
}
