/**
 * ml-track: follows the items ml-inference detects from frame to frame, per camera, and counts
 * each once (at a counting line, or when it leaves the frame). The tracking is in tracker.ts; this
 * file reads the messages and settings, sends items, periodic counts and the annotated frames.
 */
import * as fs from 'fs';
import * as path from 'path';
import { toAnnotations } from '../lib/detection';
import { cameraOf, CountReport, Detection, frameOf } from '../lib/messages';
import type { TrackInfo } from '../lib/messages';
import { failMessage, showError, statusText } from '../lib/node-status';
import { choiceSetting, describeReceived, errorMessage, Node, NodeAPI, NodeDef, NodeMessage, numberSetting } from '../lib/red-types';
import { CountMode, DEFAULT_TRACKER, Direction, DIRECTIONS, PeriodCounts, Tracker, TrackerOptions } from './tracker';

/** A camera with no frame for this long loses its tracks (its counts were reported). */
const IDLE_CAMERA_MS = 10 * 60_000;
const MODES: readonly CountMode[] = ['line', 'exit'];

function wholeNumberSetting(value: unknown, fallback: number, min: number, max: number, name: string): number {
  const n = numberSetting(value, fallback, { min, max, name });
  if (!Number.isInteger(n)) throw new Error(`Expected ${name} to be a whole number from ${min} to ${max} but received ${JSON.stringify(value)}`);
  return n;
}

/** Reads the settings; throws naming the one that is wrong. */
export function trackerSettings(config: NodeDef): { tracker: TrackerOptions; reportEverySeconds: number } {
  const reportEverySeconds = numberSetting(config.reportEvery, 60, { min: 0, max: 86_400, name: 'reportEvery' });
  if (reportEverySeconds > 0 && reportEverySeconds < 1) {
    throw new Error(`Expected reportEvery to be 0 (only when stopped) or 1 to 86400 seconds but received ${JSON.stringify(config.reportEvery)}`);
  }
  return {
    reportEverySeconds,
    tracker: {
      ...DEFAULT_TRACKER,
      mode: choiceSetting(config.mode, MODES, 'line', 'mode'),
      direction: choiceSetting(config.direction, DIRECTIONS, 'left-to-right', 'direction'),
      line: numberSetting(config.line, 0.5, { min: 0, max: 1, name: 'line' }),
      maxMissed: wholeNumberSetting(config.maxMissed, DEFAULT_TRACKER.maxMissed, 0, 100, 'maxMissed'),
      minHits: wholeNumberSetting(config.minHits, DEFAULT_TRACKER.minHits, 1, 100, 'minHits'),
      maxDistance: numberSetting(config.maxDistance, DEFAULT_TRACKER.maxDistance, { min: 0.1, max: 20, name: 'maxDistance' }),
    },
  };
}

const EXPECTED_DETECTIONS = 'Expected msg.payload to be one frame\'s detections {detections: [...]} from ml-inference (output: detection)';
const finite = (v: unknown): v is number => typeof v === 'number' && Number.isFinite(v);

/** The frame's detections, checked: a box, a label and a score each. Throws naming the field. */
function detectionsOf(payload: unknown): Detection[] {
  if (Array.isArray(payload)) throw new Error(`${EXPECTED_DETECTIONS} but received an array (a batch of ${payload.length} results); send one frame per message`);
  const detections = (payload as { detections?: unknown } | null)?.detections;
  if (!payload || typeof payload !== 'object' || !Array.isArray(detections)) {
    throw new Error(`${EXPECTED_DETECTIONS} but received ${payload && typeof payload === 'object' ? `msg.payload.detections ${describeReceived(detections)}` : describeReceived(payload)}`);
  }
  detections.forEach((d: Partial<Detection> | null, i) => {
    const b = d?.box;
    if (!b || ![b.x, b.y, b.w, b.h].every(finite) || !(b.w > 0 && b.h > 0)) {
      throw new Error(`Expected msg.payload.detections[${i}].box to be {x, y, w, h} in frame pixels with w and h above 0 but received ${JSON.stringify(b)}`);
    }
    if (typeof d!.label !== 'string') throw new Error(`Expected msg.payload.detections[${i}].label to be a string but received ${describeReceived(d!.label)}`);
    if (!finite(d!.score) || d!.score < 0 || d!.score > 1) {
      throw new Error(`Expected msg.payload.detections[${i}].score to be a number from 0 to 1 but received ${describeReceived(d!.score)}`);
    }
  });
  return detections as Detection[];
}

/**
 * Final reports of a stopped node, kept for the node with its id to send once the flows run again.
 * Node-RED stops every node of a full deploy or a shutdown in one pass and delivers messages
 * afterwards, so a report sent from the close handler would reach no stopping publish node; kept
 * in memory for a redeploy and on disk (the user directory) for a restart, it is sent late, not lost.
 */
const handedOver = new Map<string, CountReport[]>();
const handoverFile = (userDir: string, id: string) => path.join(userDir, 'ml-track', `${id.replace(/[^\w.-]/g, '_')}.json`);

function handOver(userDir: string | undefined, id: string, reports: CountReport[], warn: (text: string) => void): void {
  handedOver.set(id, reports);
  if (!userDir) return;
  try {
    const file = handoverFile(userDir, id);
    fs.mkdirSync(path.dirname(file), { recursive: true });
    fs.writeFileSync(file, JSON.stringify(reports));
  } catch (err) {
    warn(`the counts of the period so far are kept in memory only (${errorMessage(err)}): a restart of Node-RED loses them`);
  }
}

/** The reports a stopped node with this id left; `redeployed` when it was in this process (not a restart). */
function takeOver(userDir: string | undefined, id: string, warn: (text: string) => void): { reports: CountReport[]; redeployed: boolean } {
  const inMemory = handedOver.get(id);
  handedOver.delete(id);
  let reports = inMemory ?? [];
  const result = () => ({ reports, redeployed: inMemory !== undefined });
  if (!userDir) return result();
  const file = handoverFile(userDir, id);
  try {
    const saved = JSON.parse(fs.readFileSync(file, 'utf8')) as unknown;
    if (!reports.length && Array.isArray(saved)) reports = saved as CountReport[];
    fs.rmSync(file, { force: true });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') warn(`the counts saved at the last stop in ${file} cannot be used (${errorMessage(err)}); they are not sent`);
  }
  return result();
}

module.exports = function (RED: NodeAPI) {
  function MlTrack(this: Node, config: NodeDef) {
    RED.nodes.createNode(this, config);
    const node = this;
    const userDir = RED.settings.userDir;
    const warn = (text: string) => node.warn(text);
    let tracker: Tracker | undefined;
    let reportEverySeconds = 60;
    let settingError: string | undefined;
    try {
      const settings = trackerSettings(config);
      tracker = new Tracker(settings.tracker);
      reportEverySeconds = settings.reportEverySeconds;
    } catch (err) {
      settingError = `tracking not started: ${errorMessage(err)}`;
      showError(node, errorMessage(err));
      node.error(settingError);
    }
    // The last stop's final reports go out once the flows (and the publish nodes) run again.
    const { reports: pending, redeployed } = takeOver(userDir, node.id, warn);
    // After a redeploy the periods follow on without a gap; after a restart the downtime is no period.
    const periodStart = redeployed && pending.length ? Math.max(...pending.map((r) => Date.parse(r.to))) : Date.now();
    const periods = new PeriodCounts(Number.isFinite(periodStart) && periodStart <= Date.now() ? periodStart : Date.now());
    const totals = new Map<string, number>();
    let lastStatusAt = 0;

    const sendReports = (reports: CountReport[]) => {
      if (reports.length) node.send([null, reports.map((payload) => ({ payload, topic: payload.camera })), null]);
    };
    const sendPending = () => {
      RED.events?.removeListener?.('flows:started', sendPending);
      sendReports(pending.splice(0));
    };
    if (pending.length) {
      if (RED.events?.removeListener) RED.events.on('flows:started', sendPending);
      else setImmediate(sendPending);
    }

    const timer = reportEverySeconds > 0 && tracker
      ? setInterval(() => {
        const now = Date.now();
        sendReports(periods.close(now));
        tracker!.forgetIdle(now - IDLE_CAMERA_MS);
      }, reportEverySeconds * 1000)
      : undefined;

    /** At most twice a second, but at once when something was counted. */
    function showCounts(justCounted: boolean) {
      const now = Date.now();
      if (now - lastStatusAt < 500 && !justCounted) return;
      lastStatusAt = now;
      const counted = [...totals.values()].reduce((a, b) => a + b, 0);
      const byLabel = [...totals].sort((a, b) => b[1] - a[1]).map(([label, n]) => `${label} ${n}`).join(' · ');
      node.status({ fill: 'green', shape: 'dot', text: statusText(`${counted} counted${byLabel ? `: ${byLabel}` : ''}`) });
    }

    node.on('input', (msg, send, done) => {
      if (!tracker) return done(new Error(settingError));
      try {
        if (msg.reset === true) {
          tracker.reset();
          return done();
        }
        const detections = detectionsOf(msg.payload);
        const frame = frameOf(msg) ?? {};
        const camera = cameraOf(msg) || 'default';
        const capturedAt = typeof frame.capturedAt === 'string' && Number.isFinite(Date.parse(frame.capturedAt)) ? frame.capturedAt : new Date().toISOString();
        const preprocess = msg.preprocess as { sourceWidth?: unknown; sourceHeight?: unknown } | undefined;
        const width = finite(frame.width) ? frame.width : preprocess?.sourceWidth;
        const height = finite(frame.height) ? frame.height : preprocess?.sourceHeight;
        const { mode, direction } = tracker.options;
        const across = direction === 'left-to-right' || direction === 'right-to-left' ? 'width' : 'height';
        const size = across === 'width' ? width : height;
        if (mode === 'line' && !(finite(size) && size > 0)) {
          throw new Error(`Expected msg.frame.${across} (the frame's ${across} in pixels, set by ml-camera) to place the counting line but received ${describeReceived(frame[across])}`);
        }
        const update = tracker.update({
          camera, capturedAt, at: Date.parse(capturedAt), seq: finite(frame.seq) ? frame.seq : 0,
          width: finite(width) ? width : undefined, height: finite(height) ? height : undefined, detections,
        });
        periods.seen(camera);
        // The frame goes on with its track ids, drawn by ml-annotate as "#12 plastic 91%".
        detections.forEach((d, i) => {
          if (update.trackOf[i] !== undefined) d.track = update.trackOf[i];
        });
        (msg as { annotations?: unknown }).annotations = toAnnotations(detections);
        (msg as { tracks?: TrackInfo[] }).tracks = update.tracks;
        const items = update.counted.map((item) => {
          periods.add(camera, item.label);
          totals.set(item.label, (totals.get(item.label) ?? 0) + 1);
          return { payload: item, topic: camera, frame: { ...frame } } as NodeMessage;
        });
        showCounts(items.length > 0);
        send([items.length ? items : null, null, msg]);
        done();
      } catch (err) {
        failMessage(node, done, err);
      }
    });

    node.on('close', (removed: boolean, done: () => void) => {
      clearInterval(timer);
      RED.events?.removeListener?.('flows:started', sendPending);
      const reports = [...pending.splice(0), ...(tracker ? periods.close(Date.now()) : [])];
      if (reports.length) {
        // A deleted node has no successor: its report goes now, to whichever wired nodes stay.
        if (removed) sendReports(reports);
        else handOver(userDir, node.id, reports, warn);
      }
      done();
    });
  }

  RED.nodes.registerType('ml-track', MlTrack);
};
