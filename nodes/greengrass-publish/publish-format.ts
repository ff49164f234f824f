/** What greengrass-publish sends: topics from templates such as recycling/{{frame.camera}}/result, and payload bytes. */

const PLACEHOLDER = /\{\{\s*([^}]+?)\s*\}\}/g;

function lookup(msg: Record<string, unknown>, expression: string): unknown {
  const path = expression.replace(/^msg\./, '').split('.');
  let value: unknown = msg;
  for (const key of path) {
    if (value === null || typeof value !== 'object') return undefined;
    value = (value as Record<string, unknown>)[key];
  }
  return value;
}

/**
 * Fills a template. A value may not add topic levels or wildcards, so '/', '+' and '#' in values
 * become '_'; a missing field is an error rather than a silently wrong topic.
 */
export function renderTopic(template: string, msg: Record<string, unknown>): string {
  const topic = template.replace(PLACEHOLDER, (_match, expression: string) => {
    const value = lookup(msg, expression);
    if (value === undefined || value === null || value === '') {
      throw new Error(`topic template "${template}" needs msg.${expression.replace(/^msg\./, '')}, which is missing`);
    }
    return String(value).replace(/[/+#]/g, '_');
  });
  validateTopic(topic);
  return topic;
}

export function validateTopic(topic: string): void {
  if (!topic) throw new Error('no topic: set one on the node or in msg.topic');
  if (/[+#]/.test(topic)) throw new Error(`topic "${topic}" contains a wildcard (+ or #), which cannot be published to`);
  if (Buffer.byteLength(topic) > 65535) throw new Error('topic is longer than MQTT allows');
}

export function encodePayload(payload: unknown): Buffer | string {
  if (Buffer.isBuffer(payload)) return payload;
  if (typeof payload === 'string') return payload;
  if (payload === undefined) throw new Error('msg.payload is missing; nothing to publish');
  return JSON.stringify(payload, (_key, value) => {
    // Typed arrays (tensors) would serialise as index-keyed objects; send them as arrays.
    if (ArrayBuffer.isView(value) && !(value instanceof DataView)) return Array.from(value as unknown as ArrayLike<number>);
    return value;
  });
}
