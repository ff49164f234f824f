/**
 * The camera list of ml-camera (the sorter flow's SORTER_CAMERAS): several cameras for one node,
 * each with its own id and source. Two forms:
 *
 * - `belt1=rtsp://10.0.0.21/stream1,belt2=/dev/video0,belt3=/data/photos`: entries separated by
 *   commas (or line breaks), each split at its FIRST `=`, so a source may itself contain `=`
 *   (`http://cam/snap.cgi?chn=1`). A source containing a comma needs the JSON form.
 * - `[{"id": "belt1", "source": "rtsp://10.0.0.21/stream1"}, ...]` when the value starts with `[`.
 *
 * Ids become MQTT topic levels (recycling/<id>/result) and file names, so they are restricted to
 * letters, digits, `_`, `-` and `.`; duplicates are refused. Every error names the entry, by its
 * position and its text with any password removed.
 */
import { redactUrl } from './sources';

export interface CameraEntry {
  /** Camera id: frame.camera, the topic level, the event's camera. */
  id: string;
  /** What ml-camera's source setting takes: folder, file, URL, rtsp://..., /dev/videoN, or `pattern`. */
  source: string;
}

/** Letters, digits, `_`, `-`, `.`; starting with a letter or digit; at most 64 characters. */
export const CAMERA_ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;

const ID_RULE = 'letters, digits, _, - and . (starting with a letter or digit, at most 64 characters)';
const FORMS = 'id=source entries separated by commas, or a JSON array [{"id": "...", "source": "..."}]';

/**
 * The entry as it may be shown: credentials in URLs removed, long text shortened, in quotes
 * unless it is JSON already.
 */
function shown(text: string, json = false): string {
  const redacted = text.replace(/([a-z][a-z0-9+.-]*:\/\/)[^@/\s"]*@/gi, '$1');
  const short = redacted.length > 120 ? `${redacted.slice(0, 117)}...` : redacted;
  return json ? short : JSON.stringify(short);
}

/** Why an id is refused, or undefined when it is fine. */
export function cameraIdProblem(id: string): string | undefined {
  if (!id) return 'has an empty id';
  if (!CAMERA_ID_PATTERN.test(id)) return `has the id ${shown(id)}: an id may only hold ${ID_RULE}, since it becomes an MQTT topic level`;
  return undefined;
}

/**
 * Parses a camera list; '' (or only white space) is an empty list. Throws an Error naming the
 * first bad entry: "cameras entry 2 ("belt2") is not id=source ...".
 */
export function parseCameraList(value: string): CameraEntry[] {
  const text = value.trim();
  if (!text) return [];
  const entries = text.startsWith('[') ? fromJson(text) : fromPairs(text);
  const seen = new Map<string, number>();
  entries.forEach((entry, i) => {
    const first = seen.get(entry.id);
    if (first !== undefined) {
      throw new Error(`cameras entry ${i + 1} (${shown(entry.text, entry.json)}) repeats the id "${entry.id}" of entry ${first + 1}: every camera needs its own id`);
    }
    seen.set(entry.id, i);
  });
  return entries.map(({ id, source }) => ({ id, source }));
}

interface ParsedEntry extends CameraEntry {
  /** The entry as written, for messages. */
  text: string;
  json: boolean;
}

function checked(index: number, text: string, json: boolean, id: string, source: string): ParsedEntry {
  const problem = cameraIdProblem(id);
  if (problem) throw new Error(`cameras entry ${index + 1} (${shown(text, json)}) ${problem}`);
  if (!source) throw new Error(`cameras entry ${index + 1} (${shown(text, json)}) has no source: give a folder, an image file, a URL, rtsp://..., /dev/videoN, or "pattern" for the test pattern`);
  return { id, source, text, json };
}

function fromPairs(text: string): ParsedEntry[] {
  // A line break separates entries as a comma does; blank lines and a comma ending a line are fine.
  const pieces = text.split(/\r?\n/).map((line) => line.trim()).filter(Boolean)
    .flatMap((line) => (line.endsWith(',') ? line.slice(0, -1) : line).split(','));
  return pieces.map((raw, i) => {
    const entry = raw.trim();
    if (!entry) throw new Error(`cameras entry ${i + 1} is empty: expected ${FORMS} (a stray comma?)`);
    const eq = entry.indexOf('=');
    if (eq < 0) throw new Error(`cameras entry ${i + 1} (${shown(entry)}) is not id=source: expected ${FORMS}`);
    return checked(i, entry, false, entry.slice(0, eq).trim(), entry.slice(eq + 1).trim());
  });
}

function fromJson(text: string): ParsedEntry[] {
  let list: unknown;
  try {
    list = JSON.parse(text);
  } catch (err) {
    throw new Error(`cameras starts with "[" but is not valid JSON (${(err as Error).message}): expected ${FORMS}`);
  }
  if (!Array.isArray(list)) throw new Error(`cameras starts with "[" but is not a JSON array: expected ${FORMS}`);
  return list.map((item, i) => {
    const text = JSON.stringify(item) ?? String(item);
    if (typeof item !== 'object' || item === null || Array.isArray(item)) {
      throw new Error(`cameras entry ${i + 1} (${shown(text, true)}) is not an object: expected {"id": "...", "source": "..."}`);
    }
    const record = item as Record<string, unknown>;
    const unknownKeys = Object.keys(record).filter((k) => k !== 'id' && k !== 'source');
    if (unknownKeys.length) {
      throw new Error(`cameras entry ${i + 1} (${shown(text, true)}) has the unknown key${unknownKeys.length > 1 ? 's' : ''} ${unknownKeys.map((k) => JSON.stringify(k)).join(', ')}: expected only "id" and "source"`);
    }
    for (const key of ['id', 'source']) {
      if (record[key] !== undefined && typeof record[key] !== 'string') {
        throw new Error(`cameras entry ${i + 1} (${shown(text, true)}) has a ${key} that is not a string`);
      }
    }
    return checked(i, text, true, String(record.id ?? '').trim(), String(record.source ?? '').trim());
  });
}

/** One line for logs: "belt1 rtsp://10.0.0.21/stream1, belt2 /dev/video0" (no credentials). */
export function describeCameras(cameras: CameraEntry[]): string {
  return cameras.map((c) => `${c.id} ${redactUrl(c.source)}`).join(', ');
}

/**
 * Which camera ids the ml-camera nodes of this runtime use. Frames are told apart by their camera
 * id alone (decode and inference queues, ml-route's agreement, ml-track's tracks, topics), so two
 * nodes with the same id (a copied node keeps "cam1") would mix their frames without a word.
 */
export class CameraIdRegistry {
  private readonly owners = new Map<string, string[]>();

  /** Records `owner`'s ids; returns, per id already used by other owners, those owners. */
  claim(owner: string, ids: string[]): { id: string; others: string[] }[] {
    const shared: { id: string; others: string[] }[] = [];
    for (const id of new Set(ids)) {
      const users = (this.owners.get(id) ?? []).filter((u) => u !== owner);
      if (users.length) shared.push({ id, others: [...users] });
      this.owners.set(id, [...users, owner]);
    }
    return shared;
  }

  /** Forgets `owner`'s ids (its node closed). */
  release(owner: string): void {
    for (const [id, users] of this.owners) {
      const left = users.filter((u) => u !== owner);
      if (left.length) this.owners.set(id, left);
      else this.owners.delete(id);
    }
  }
}
