/**
 * What a broker or the nucleus would refuse, checked before a message is accepted: such a message
 * fails at once with the reason, instead of waiting in the spool for a delivery that cannot happen.
 */
import type { SpooledMessage } from './spool';

export interface OutgoingCheck {
  /** Topics starting with `$` are reserved by brokers ($SYS, $aws); only when asked. */
  allowReserved?: boolean;
}

export interface OutgoingLimits extends OutgoingCheck {
  /** AWS IoT Core: at most 256 bytes and 7 slashes in a topic (its documented quotas). */
  iotCore?: boolean;
  maxPayloadBytes?: number;
}

export const IOT_CORE_MAX_TOPIC_BYTES = 256;
export const IOT_CORE_MAX_SLASHES = 7;
/** AWS IoT Core's largest message payload (its documented quota). */
export const IOT_CORE_MAX_PAYLOAD_BYTES = 128 * 1024;
/** The MQTT protocol's own limit on a topic name. */
const MQTT_MAX_TOPIC_BYTES = 65_535;

export function checkTopic(topic: unknown, limits: OutgoingLimits = {}): string {
  if (typeof topic !== 'string') throw new Error(`expected the topic to be a string but received ${topic === null ? 'null' : typeof topic}`);
  if (!topic) throw new Error('no topic: set one on the node or in msg.topic');
  if (topic.includes('\u0000')) throw new Error(`topic "${topic.replace(/\u0000/g, '\\0')}" contains a NUL character, which MQTT forbids`);
  if (/[+#]/.test(topic)) throw new Error(`topic "${topic}" contains a wildcard (+ or #), which cannot be published to`);
  if (topic.startsWith('$') && !limits.allowReserved) {
    throw new Error(`topic "${topic}" starts with $, which brokers reserve ($SYS, $aws): tick "allow $ topics" on the publish node if it is meant`);
  }
  const bytes = Buffer.byteLength(topic);
  if (bytes > MQTT_MAX_TOPIC_BYTES) throw new Error(`topic is ${bytes} bytes long; MQTT allows at most ${MQTT_MAX_TOPIC_BYTES}`);
  if (limits.iotCore) {
    if (bytes > IOT_CORE_MAX_TOPIC_BYTES) throw new Error(`topic is ${bytes} bytes long; AWS IoT Core takes at most ${IOT_CORE_MAX_TOPIC_BYTES}`);
    const slashes = topic.split('/').length - 1;
    if (slashes > IOT_CORE_MAX_SLASHES) throw new Error(`topic "${topic}" has ${slashes} slashes; AWS IoT Core takes at most ${IOT_CORE_MAX_SLASHES}`);
  }
  return topic;
}

export function checkOutgoing(message: Pick<SpooledMessage, 'topic' | 'payload'>, limits: OutgoingLimits): void {
  checkTopic(message.topic, limits);
  const max = limits.maxPayloadBytes ?? (limits.iotCore ? IOT_CORE_MAX_PAYLOAD_BYTES : undefined);
  const bytes = typeof message.payload === 'string' ? Buffer.byteLength(message.payload) : message.payload.length;
  if (max !== undefined && bytes > max) {
    throw new Error(`payload is ${bytes} bytes; ${limits.iotCore ? 'AWS IoT Core' : 'the broker'} takes at most ${max} bytes on ${message.topic} (the connection's size limit)`);
  }
}
