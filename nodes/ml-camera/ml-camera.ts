/** ml-camera: emits JPEG frames with their metadata on an interval or when a message arrives. */
import sharp from 'sharp';
import { RateMeter } from '../lib/frame-queue';
import { errorMessage, Node, NodeAPI, NodeDef, NodeMessage, numberSetting, textSetting } from '../lib/red-types';
import {
  detectSourceType, FileSource, FolderSource, FrameSource, normaliseToJpeg, redactUrl, SnapshotSource, SourceType, TestPatternSource,
} from './sources';

export interface FrameInfo {
  camera: string;
  seq: number;
  capturedAt: string;
  width: number;
  height: number;
  origin: string;
  source: SourceType;
}

module.exports = function (RED: NodeAPI) {
  function MlCamera(this: Node, config: NodeDef) {
    RED.nodes.createNode(this, config);
    const node = this;
    const cameraId = textSetting(config.cameraId) || 'cam1';
    const sourceSetting = textSetting(config.source);
    const configuredType = String(config.sourceType || 'auto');
    let intervalMs = 1000;
    let timeoutMs = 5000;
    try {
      intervalMs = numberSetting(config.interval, 1000, { min: 0, max: 86_400_000 });
      timeoutMs = numberSetting(config.timeout, 5000, { min: 100, max: 600_000 });
    } catch (err) {
      node.warn(`interval/timeout: ${errorMessage(err)}; using 1000 ms / 5000 ms`);
    }
    const meter = new RateMeter();
    let source: FrameSource | undefined;
    let opening: Promise<FrameSource> | undefined;
    let timer: NodeJS.Timeout | undefined;
    let capturing = false;
    let running = intervalMs > 0;
    let closed = false;
    let seq = 0;
    let skipped = 0;
    let finished = false;

    async function openSource(): Promise<FrameSource> {
      const type = configuredType === 'auto' ? await detectSourceType(sourceSetting) : (configuredType as SourceType);
      switch (type) {
        case 'pattern':
          return new TestPatternSource(numberSetting(config.patternWidth, 640, { min: 16, max: 4096 }), numberSetting(config.patternHeight, 480, { min: 16, max: 4096 }));
        case 'folder':
          return new FolderSource(sourceSetting, { loop: config.loop !== false, recursive: config.recursive !== false });
        case 'file':
          return new FileSource(sourceSetting);
        case 'url':
          return new SnapshotSource(sourceSetting, { username: node.credentials?.user, password: node.credentials?.password, timeoutMs });
        default:
          throw new Error(`unknown source type "${type}"`);
      }
    }

    function getSource(): Promise<FrameSource> {
      if (source) return Promise.resolve(source);
      opening ??= openSource().then((s) => {
        if (closed) s.close();
        source = s;
        return s;
      }).finally(() => { opening = undefined; });
      return opening;
    }

    async function capture(trigger?: NodeMessage): Promise<NodeMessage | null> {
      const src = await getSource();
      const raw = await src.next();
      if (!raw) return null;
      let image: Buffer;
      let meta: sharp.Metadata;
      try {
        image = await normaliseToJpeg(raw.image);
        meta = await sharp(image).metadata();
      } catch (err) {
        throw new Error(`frame from ${raw.origin} is not a readable image: ${errorMessage(err)}`);
      }
      const frame: FrameInfo = {
        camera: cameraId,
        seq: ++seq,
        capturedAt: new Date().toISOString(),
        width: meta.width ?? 0,
        height: meta.height ?? 0,
        origin: raw.origin,
        source: src.type,
      };
      const msg: NodeMessage = trigger ?? {};
      msg.payload = image;
      msg.frame = frame;
      msg.topic = msg.topic ?? cameraId;
      return msg;
    }

    function showStatus() {
      const where = sourceSetting ? redactUrl(sourceSetting).split('/').slice(-2).join('/') : 'test pattern';
      const parts = [`${meter.rate().toFixed(1)} fps`, `#${seq}`];
      if (skipped) parts.push(`skipped ${skipped}`);
      node.status({ fill: 'green', shape: 'dot', text: `${where} · ${parts.join(' · ')}`.slice(0, 80) });
    }

    /** One capture at a time: a tick that finds the previous capture still running is skipped. */
    async function tick(trigger?: NodeMessage, send = node.send.bind(node)): Promise<void> {
      if (capturing) {
        skipped++;
        throw new Error('busy');
      }
      capturing = true;
      try {
        const msg = await capture(trigger);
        if (closed) return;
        if (!msg) {
          finished = true;
          stopTimer();
          node.status({ fill: 'blue', shape: 'dot', text: `finished: ${seq} frames` });
          return;
        }
        meter.tick();
        showStatus();
        send(msg);
      } finally {
        capturing = false;
      }
    }

    function startTimer() {
      stopTimer();
      if (intervalMs <= 0 || closed) return;
      running = true;
      timer = setInterval(() => {
        tick().catch((err) => {
          if (errorMessage(err) === 'busy') return;
          node.status({ fill: 'red', shape: 'ring', text: errorMessage(err).slice(0, 70) });
          node.error(errorMessage(err), {});
        });
      }, intervalMs);
    }

    function stopTimer() {
      running = false;
      if (timer) clearInterval(timer);
      timer = undefined;
    }

    node.on('input', async (msg, send, done) => {
      const command = typeof msg.command === 'string' ? msg.command : undefined;
      if (command === 'stop') {
        stopTimer();
        node.status({ fill: 'grey', shape: 'ring', text: 'stopped' });
        return done();
      }
      if (command === 'start' || command === 'restart') {
        if (command === 'restart') {
          source?.rewind();
          finished = false;
        }
        startTimer();
        return done();
      }
      if (command !== undefined) return done(new Error(`msg.command must be start, stop or restart, got "${command}"`));
      if (finished) return done();
      try {
        await tick(msg, send);
        done();
      } catch (err) {
        if (errorMessage(err) === 'busy') return done(); // deliberate drop: a capture is in progress
        node.status({ fill: 'red', shape: 'ring', text: errorMessage(err).slice(0, 70) });
        done(err as Error);
      }
    });

    node.on('close', (_removed: boolean, done: () => void) => {
      closed = true;
      stopTimer();
      source?.close();
      source = undefined;
      done();
    });

    if (running) {
      node.status({ fill: 'grey', shape: 'ring', text: 'starting' });
      startTimer();
    } else {
      node.status({ fill: 'grey', shape: 'ring', text: 'waiting for trigger' });
    }
  }

  RED.nodes.registerType('ml-camera', MlCamera, {
    credentials: { user: { type: 'text' }, password: { type: 'password' } },
  });
};
