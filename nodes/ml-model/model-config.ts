/** Pure helpers of the ml-model config node: resolving paths and labels. */
import { promises as fs } from 'fs';
import * as path from 'path';

export const PACKAGE_ROOT = path.resolve(__dirname, '..', '..');
export const BUNDLED_MODEL = path.join(PACKAGE_ROOT, 'models', 'waste-classifier.onnx');
/** `bundled:conveyor-detector.onnx`: a model in this package's models/ folder, wherever it is installed. */
export const BUNDLED_PREFIX = 'bundled:';

/**
 * Empty means the bundled waste classifier, `bundled:<file>` another model the package ships;
 * relative paths resolve against the Node-RED user directory.
 */
export function resolveModelPath(configured: string | undefined, userDir: string | undefined): string {
  const value = (configured ?? '').trim();
  if (!value) return BUNDLED_MODEL;
  // Only a file name: a bundled model never points outside models/.
  if (value.startsWith(BUNDLED_PREFIX)) return path.join(PACKAGE_ROOT, 'models', path.basename(value.slice(BUNDLED_PREFIX.length).trim()));
  if (path.isAbsolute(value)) return value;
  return path.resolve(userDir || process.cwd(), value);
}

/** Labels from a dialog list: one per line, or comma-separated on a single line. */
export function parseLabelList(text: string): string[] {
  const trimmed = text.trim();
  if (!trimmed) return [];
  const parts = trimmed.includes('\n') ? trimmed.split(/\r?\n/) : trimmed.split(',');
  return parts.map((l) => l.trim()).filter(Boolean);
}

/** A labels file is a JSON array, or plain text with one label per line (lines starting with # skipped). */
export async function readLabelsFile(file: string): Promise<string[]> {
  let text: string;
  try {
    text = await fs.readFile(file, 'utf8');
  } catch (err) {
    throw new Error(`cannot read labels file ${file}: ${(err as Error).message}`);
  }
  const trimmed = text.trim();
  if (trimmed.startsWith('[')) {
    let parsed: unknown;
    try {
      parsed = JSON.parse(trimmed);
    } catch (err) {
      throw new Error(`labels file ${file} is not valid JSON (${(err as Error).message}): expected a JSON array of strings, or one label per line`);
    }
    if (!Array.isArray(parsed) || !parsed.every((l) => typeof l === 'string')) {
      throw new Error(`labels file ${file} must be a JSON array of strings`);
    }
    return parsed;
  }
  return trimmed.split(/\r?\n/).map((l) => l.trim()).filter((l) => l && !l.startsWith('#'));
}
