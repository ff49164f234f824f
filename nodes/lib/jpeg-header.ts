/**
 * A JPEG's size and EXIF orientation read from its header in JavaScript. Asking sharp for the same
 * (metadata()) costs a round trip through libvips of about 0.4 ms of CPU per frame, most of it on
 * the event loop, and every frame needs it twice (ml-camera for msg.frame, ml-preprocess for the
 * crop). Anything this reader does not follow exactly gives undefined, and the caller asks sharp.
 */
export interface JpegHeader {
  /** As stored (before the EXIF orientation is applied), like sharp's metadata(). */
  width: number;
  height: number;
  /** 1..8; 1 when the file has no EXIF orientation. */
  orientation: number;
}

/** Start-of-frame markers (C0-CF except DHT C4, JPG C8 and DAC CC) carry the size. */
function isStartOfFrame(marker: number): boolean {
  return marker >= 0xc0 && marker <= 0xcf && marker !== 0xc4 && marker !== 0xc8 && marker !== 0xcc;
}

export function readJpegHeader(b: Uint8Array): JpegHeader | undefined {
  if (b.length < 4 || b[0] !== 0xff || b[1] !== 0xd8) return undefined;
  let orientation: number | undefined;
  let i = 2;
  while (i + 4 <= b.length) {
    if (b[i] !== 0xff) return undefined;
    const marker = b[i + 1];
    if (marker === 0xff) {
      i++; // fill byte
      continue;
    }
    if (marker === 0x01 || (marker >= 0xd0 && marker <= 0xd7)) {
      i += 2; // markers without a length
      continue;
    }
    if (marker === 0xd8 || marker === 0xd9 || marker === 0xda) return undefined; // no frame header before the data
    const length = (b[i + 2] << 8) | b[i + 3];
    const end = i + 2 + length;
    if (length < 2 || end > b.length) return undefined;
    if (isStartOfFrame(marker)) {
      if (length < 8) return undefined;
      const height = (b[i + 5] << 8) | b[i + 6];
      const width = (b[i + 7] << 8) | b[i + 8];
      if (!width || !height) return undefined; // height 0: given later (DNL), which sharp handles
      return { width, height, orientation: orientation ?? 1 };
    }
    if (marker === 0xe1 && orientation === undefined && isExif(b, i + 4, end)) {
      const found = exifOrientation(b, i + 10, end);
      if (found === null) return undefined;
      orientation = found ?? 1; // the first EXIF block counts, as in libvips
    }
    i = end;
  }
  return undefined;
}

function isExif(b: Uint8Array, at: number, end: number): boolean {
  // "Exif\0\0"
  return end - at >= 6 && b[at] === 0x45 && b[at + 1] === 0x78 && b[at + 2] === 0x69 && b[at + 3] === 0x66 && b[at + 4] === 0 && b[at + 5] === 0;
}

/**
 * The orientation tag (0x0112) of IFD0 in the TIFF structure at [tiff, end): its value, undefined
 * when there is none, null when the structure is not what the standard says (then sharp decides).
 */
function exifOrientation(b: Uint8Array, tiff: number, end: number): number | undefined | null {
  if (end - tiff < 8) return null;
  const little = b[tiff] === 0x49 && b[tiff + 1] === 0x49;
  if (!little && !(b[tiff] === 0x4d && b[tiff + 1] === 0x4d)) return null;
  const u16 = (at: number) => (little ? b[at] | (b[at + 1] << 8) : (b[at] << 8) | b[at + 1]);
  const u32 = (at: number) => (little ? (b[at] | (b[at + 1] << 8) | (b[at + 2] << 16)) + b[at + 3] * 0x1000000 : ((b[at + 1] << 16) | (b[at + 2] << 8) | b[at + 3]) + b[at] * 0x1000000);
  if (u16(tiff + 2) !== 42) return null;
  const ifd = tiff + u32(tiff + 4);
  if (ifd + 2 > end) return null;
  const count = u16(ifd);
  if (ifd + 2 + count * 12 > end) return null;
  for (let k = 0; k < count; k++) {
    const entry = ifd + 2 + k * 12;
    if (u16(entry) !== 0x0112) continue;
    // SHORT, one value, stored in the first two bytes of the value field.
    if (u16(entry + 2) !== 3 || u32(entry + 4) !== 1) return null;
    const value = u16(entry + 8);
    return value >= 1 && value <= 8 ? value : null;
  }
  return undefined;
}
