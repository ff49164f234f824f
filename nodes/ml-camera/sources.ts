/** Frame sources of ml-camera that need no video decoder: folder, file, snapshot URL, test pattern. */
import { promises as fs, readFile as readFileCallback } from 'fs';
import * as http from 'http';
import * as https from 'https';
import * as path from 'path';
import sharp from 'sharp';
import { ChallengeAnswer, HttpCameraAuth } from './http-auth';

import type { SourceType } from '../lib/messages';

export type { SourceType };

export interface RawFrame {
  /** Encoded image bytes (JPEG after normaliseToJpeg). */
  image: Buffer;
  /** Where the frame came from: file path or URL without credentials. */
  origin: string;
}

export interface FrameSource {
  readonly type: SourceType;
  /**
   * The next frame; null when a finite source (a folder played once) is exhausted; undefined when a
   * live source has no frame newer than the last one taken.
   */
  next(signal?: AbortSignal): Promise<RawFrame | null | undefined>;
  /** Start again from the beginning (folders). */
  rewind(): void;
  close(): void | Promise<void>;
}

export const IMAGE_EXTENSIONS = new Set(['.jpg', '.jpeg', '.png', '.webp', '.bmp', '.tif', '.tiff', '.gif']);
const MAX_SNAPSHOT_BYTES = 32 * 1024 * 1024;

const EXPECTED_SOURCES = 'expected a folder, an image file, an http(s) snapshot or MJPEG URL, rtsp://..., /dev/videoN, or empty for the test pattern';

/** An http(s) URL whose path looks like a video stream rather than a still image. */
export function looksLikeMjpeg(url: string): boolean {
  try {
    const { pathname, search } = new URL(url);
    return /\.(mjpe?g|mpjpeg)$|mjpe?g|video|stream|faststream|action=stream/i.test(pathname + search);
  } catch {
    return false;
  }
}

/** A V4L2 device: /dev/videoN, or a stable /dev/v4l/by-id/... (or by-path) name of one. */
export function isV4l2Device(source: string): boolean {
  return /^\/dev\/video\d+$/.test(source) || source.startsWith('/dev/v4l/');
}

/**
 * Decides the source type from the setting: '' -> test pattern, rtsp(s):// -> RTSP, /dev/video* ->
 * V4L2, http(s) -> MJPEG stream when the path says so (.mjpg, /video, stream...) else a snapshot,
 * anything else a folder or file on disk.
 */
export async function detectSourceType(source: string): Promise<SourceType> {
  const value = source.trim();
  if (!value || value === 'pattern' || value === 'test-pattern') return 'pattern';
  if (/^rtsps?:\/\//i.test(value)) return 'rtsp';
  if (isV4l2Device(value)) return 'v4l2';
  if (/^https?:\/\//i.test(value)) return looksLikeMjpeg(value) ? 'mjpeg' : 'url';
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(value)) {
    throw new Error(`unsupported camera source "${redactUrl(value)}": ${EXPECTED_SOURCES}`);
  }
  try {
    const stat = await fs.stat(value);
    return stat.isDirectory() ? 'folder' : 'file';
  } catch {
    throw new Error(`camera source "${value}" does not exist: ${EXPECTED_SOURCES}`);
  }
}

export function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.username || u.password) {
      u.username = '';
      u.password = '';
    }
    return u.toString();
  } catch {
    return url.replace(/\/\/[^@/]*@/, '//');
  }
}

/**
 * A whole file, by fs.readFile's callback form: fs/promises' readFile takes a separate trip through
 * the thread pool and the event loop for open, stat, read and close, several times the CPU per frame.
 */
function readWhole(file: string, signal?: AbortSignal): Promise<Buffer> {
  return new Promise((resolve, reject) => readFileCallback(file, { signal }, (err, data) => (err ? reject(err) : resolve(data))));
}

export function isJpeg(image: Buffer): boolean {
  return image.length > 3 && image[0] === 0xff && image[1] === 0xd8 && image[2] === 0xff;
}

/** Frames leave the camera as JPEG whatever the file format, so later steps handle one format. */
export async function normaliseToJpeg(image: Buffer): Promise<Buffer> {
  if (isJpeg(image)) return image;
  return sharp(image, { failOn: 'error' }).rotate().jpeg({ quality: 92 }).toBuffer();
}

/** Recursively lists image files under a folder in natural order (img2 before img10). */
export async function listImages(dir: string, recursive: boolean): Promise<string[]> {
  const found: string[] = [];
  async function walk(d: string) {
    const entries = await fs.readdir(d, { withFileTypes: true });
    for (const e of entries) {
      if (e.name.startsWith('.')) continue;
      const full = path.join(d, e.name);
      if (e.isDirectory()) {
        if (recursive) await walk(full);
      } else if (IMAGE_EXTENSIONS.has(path.extname(e.name).toLowerCase())) {
        found.push(full);
      }
    }
  }
  await walk(dir);
  const collator = new Intl.Collator('en', { numeric: true });
  return found.sort((a, b) => collator.compare(a, b));
}

export class FolderSource implements FrameSource {
  readonly type = 'folder';
  private files: string[] | undefined;
  private index = 0;

  constructor(private readonly dir: string, private readonly options: { loop: boolean; recursive: boolean }) {}

  async next(signal?: AbortSignal): Promise<RawFrame | null> {
    // The folder is listed again at each pass, so images dropped into it are picked up.
    if (!this.files || (this.index >= this.files.length && this.options.loop)) {
      this.files = await listImages(this.dir, this.options.recursive);
      this.index = 0;
      if (this.files.length === 0) throw new Error(`folder ${this.dir} has no images (${[...IMAGE_EXTENSIONS].join(', ')})`);
    }
    while (this.index < this.files.length) {
      const file = this.files[this.index++];
      try {
        return { image: await readWhole(file, signal), origin: file };
      } catch (err) {
        // A file removed since the listing is skipped; anything else is reported.
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      }
    }
    return null;
  }

  rewind(): void {
    this.files = undefined;
  }

  close(): void {
    this.files = undefined;
  }
}

export class FileSource implements FrameSource {
  readonly type = 'file';
  constructor(private readonly file: string) {}

  async next(signal?: AbortSignal): Promise<RawFrame> {
    // Read every time: another process may be replacing the file with newer snapshots.
    return { image: await readWhole(this.file, signal), origin: this.file };
  }

  rewind(): void {}
  close(): void {}
}

export interface CameraEndpoint {
  url: URL;
  /** The URL without credentials, for msg.frame.origin and messages. */
  origin: string;
  username?: string;
  password?: string;
}

/**
 * Credentials may come in the URL or from the node's credentials (which win); either way they move
 * to an Authorization header and never appear in msg.frame.origin.
 */
export function cameraEndpoint(address: string, username?: string, password?: string): CameraEndpoint {
  const url = new URL(address);
  if (url.username && !username) {
    username = decodeURIComponent(url.username);
    password = decodeURIComponent(url.password);
  }
  url.username = '';
  url.password = '';
  return { url, origin: url.toString(), username, password };
}

export { basicAuthorization } from './http-auth';

/** What to check when an HTTP camera cannot be reached. */
export function connectionHint(err: NodeJS.ErrnoException): string {
  if (err.code === 'ECONNREFUSED') return ' (nothing listens there: is the camera on and the port right?)';
  if (err.code === 'ENOTFOUND') return ' (unknown host name)';
  return '';
}

export interface SnapshotOptions {
  username?: string;
  password?: string;
  /** Longest silence of the camera (connect, answer, or between two chunks of the image). */
  timeoutMs: number;
}

export class SnapshotSource implements FrameSource {
  readonly type = 'url';
  private readonly agent: http.Agent;
  private readonly url: URL;
  private readonly origin: string;
  private readonly auth: HttpCameraAuth;
  private readonly requests = new Set<http.ClientRequest>();

  constructor(address: string, private readonly options: SnapshotOptions) {
    const endpoint = cameraEndpoint(address, options.username, options.password);
    this.url = endpoint.url;
    this.origin = endpoint.origin;
    const secure = this.url.protocol === 'https:';
    this.auth = new HttpCameraAuth(endpoint.username, endpoint.password ?? '', secure);
    this.agent = secure ? new https.Agent({ keepAlive: true, maxSockets: 1 }) : new http.Agent({ keepAlive: true, maxSockets: 1 });
  }

  /** One snapshot; a 401 challenge is answered once with the scheme the camera asks for. */
  async next(signal?: AbortSignal): Promise<RawFrame> {
    const first = await this.get(signal);
    if (first.status !== 401) return this.frameOf(first);
    const answer = this.auth.challenge(first.challenge, first.sentAuthorization);
    if (answer === 'retry') {
      const second = await this.get(signal);
      if (second.status !== 401) return this.frameOf(second);
      return this.frameOf(second, this.auth.challenge(second.challenge, second.sentAuthorization));
    }
    return this.frameOf(first, answer);
  }

  private frameOf(reply: SnapshotReply, authAnswer?: ChallengeAnswer): RawFrame {
    if (reply.status === 200) return { image: reply.body, origin: this.origin };
    const hint = reply.status === 401
      ? (authAnswer === 'no-credentials' ? ' (the camera needs a user name and password)' : ' (check the user name and password)')
      : reply.status === 403 ? ' (check the user name and password)' : reply.status === 404 ? ' (check the URL path)' : '';
    throw new Error(`snapshot ${this.origin} answered HTTP ${reply.status}${hint}`);
  }

  private get(signal?: AbortSignal): Promise<SnapshotReply> {
    const client = this.url.protocol === 'https:' ? https : http;
    const headers: Record<string, string> = { Accept: 'image/jpeg, image/*' };
    const authorization = this.auth.header('GET', this.url.pathname + this.url.search);
    if (authorization) headers.Authorization = authorization;
    return new Promise((resolve, reject) => {
      if (signal?.aborted) return reject(signal.reason);
      const req = client.get(this.url, { agent: this.agent, headers, timeout: this.options.timeoutMs, signal }, (res) => {
        const status = res.statusCode ?? 0;
        if (status !== 200) {
          res.resume();
          return resolve({ status, body: Buffer.alloc(0), challenge: res.headersDistinct['www-authenticate'], sentAuthorization: Boolean(authorization) });
        }
        const chunks: Buffer[] = [];
        let size = 0;
        res.on('data', (c: Buffer) => {
          size += c.length;
          if (size > MAX_SNAPSHOT_BYTES) {
            req.destroy(new Error(`snapshot ${this.origin} is larger than ${MAX_SNAPSHOT_BYTES} bytes`));
          } else {
            chunks.push(c);
          }
        });
        res.on('end', () => resolve({ status, body: Buffer.concat(chunks), sentAuthorization: Boolean(authorization) }));
        res.on('error', (err) => reject(new Error(`snapshot ${this.origin} failed: ${err.message}`)));
      });
      this.requests.add(req);
      req.on('timeout', () => req.destroy(new Error(`snapshot ${this.origin} did not answer within ${this.options.timeoutMs} ms`)));
      req.on('error', (err: NodeJS.ErrnoException) => {
        if (signal?.aborted) return reject(signal.reason);
        reject(new Error(`snapshot ${this.origin} failed: ${err.message}${connectionHint(err)}`));
      });
      req.on('close', () => this.requests.delete(req));
    });
  }

  rewind(): void {}

  close(): void {
    for (const req of this.requests) req.destroy();
    this.agent.destroy();
  }
}

interface SnapshotReply {
  status: number;
  body: Buffer;
  challenge?: string[];
  sentAuthorization: boolean;
}

/** A generated frame: colour bars with a moving marker and the frame number, for setting up flows. */
export class TestPatternSource implements FrameSource {
  readonly type = 'pattern';
  private count = 0;
  constructor(private readonly width = 640, private readonly height = 480) {}

  async next(): Promise<RawFrame> {
    const { width: w, height: h } = this;
    const n = this.count++;
    const colours = ['#c0c0c0', '#c0c000', '#00c0c0', '#00c000', '#c000c0', '#c00000', '#0000c0'];
    const bar = w / colours.length;
    const bars = colours.map((c, i) => `<rect x="${i * bar}" y="0" width="${bar + 1}" height="${h * 0.7}" fill="${c}"/>`).join('');
    const markerX = ((n * 37) % Math.max(1, w - 40)) + 20;
    const svg = `<svg xmlns="http://www.w3.org/2000/svg" width="${w}" height="${h}">
      <rect width="100%" height="100%" fill="#202020"/>${bars}
      <circle cx="${markerX}" cy="${h * 0.85}" r="${h * 0.06}" fill="#ffffff"/>
      <text x="10" y="${h * 0.97}" font-family="sans-serif" font-size="${Math.round(h / 20)}" fill="#ffffff">test pattern #${n}</text>
    </svg>`;
    const image = await sharp(Buffer.from(svg)).jpeg({ quality: 85 }).toBuffer();
    return { image, origin: `test-pattern:${n}` };
  }

  rewind(): void {
    this.count = 0;
  }

  close(): void {}
}
