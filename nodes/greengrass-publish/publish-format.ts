/** What greengrass-publish sends: topics from templates such as recycling/{{frame.camera}}/result, and payload bytes. */
import type { Classification, FrameInfo, Prediction } from '../lib/messages';

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
export function renderTopic(template: string, msg: Record<string, unknown>, env: NodeJS.ProcessEnv = process.env): string {
  // ${NAME} or ${NAME:-default} inside a template come from the environment (Node-RED itself only
  // substitutes a property that is exactly ${NAME}); e.g. ${SORTER_TOPIC_PREFIX:-recycling}/...
  const withEnv = template.replace(/\$\{(\w+)(?::-([^}]*))?\}/g, (_m, name: string, fallback?: string) => {
    const value = env[name];
    if (value !== undefined && value !== '') return value;
    if (fallback !== undefined) return fallback;
    throw new Error(`topic template "${template}" needs the environment variable ${name}, which is not set`);
  });
  const topic = withEnv.replace(PLACEHOLDER, (_match, expression: string) => {
    const value = lookup(msg, expression);
    if (value === undefined || value === null || value === '') {
      throw new Error(`topic template "${template}" needs msg.${expression.replace(/^msg\./, '')}, which is missing`);
    }
    return String(value).replace(/[/+#\u0000]/g, '_');
  });
  // The rest (NUL, wildcards, reserved $ topics, length) is checked by the connection, which knows its limits.
  if (!topic) throw new Error('no topic: set one on the node or in msg.topic');
  return topic;
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

/** A classification (lib/messages) as it may arrive: possibly copied into a result with its capture time. */
type Scored = Partial<Record<keyof Classification | 'capturedAt', unknown>> & { topK?: Partial<Record<keyof Prediction, unknown>>[] };

/**
 * The message shape of AWS's Greengrass ML inference components (aws.greengrass.DLRImageClassification
 * and friends), so IoT rules and dashboards built for them keep working.
 */
export function toAwsMlInferenceMessage(payload: unknown, frame?: Partial<FrameInfo>, now = new Date()): Record<string, unknown> {
  const p = payload as Scored | undefined;
  if (!p || typeof p !== 'object') throw new Error('the AWS ML inference format needs msg.payload to be a classification {label, score, topK}');
  const predictions = Array.isArray(p.topK) && p.topK.length ? p.topK : [{ label: p.label, score: p.score }];
  if (!predictions.every((x) => typeof x.label === 'string' && typeof x.score === 'number')) {
    throw new Error('the AWS ML inference format needs msg.payload.topK as [{label, score}] (or label and score)');
  }
  // The capture time is on msg.frame when inference is wired straight in; on the payload when a flow copied it.
  const capturedAt = [p.capturedAt, frame?.capturedAt]
    .find((t): t is string => typeof t === 'string' && !Number.isNaN(Date.parse(t)));
  const at = capturedAt ? new Date(capturedAt) : now;
  const timestamp = at.toISOString().replace('T', ' ').replace('Z', '').replace(/\.(\d{3})$/, '.$1000');
  return {
    timestamp,
    'inference-type': 'image-classification',
    'inference-description': `Top ${predictions.length} predictions`,
    'inference-results': predictions.map((x) => ({ Label: x.label, Score: String(x.score) })),
  };
}
