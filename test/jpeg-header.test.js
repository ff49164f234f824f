// The JPEG header reader that spares ml-camera and ml-preprocess a trip through libvips per frame
// must agree with sharp's metadata(), and step aside (undefined) whenever it is not sure.
const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('fs');
const path = require('path');
const sharp = require('sharp');
const { readJpegHeader } = require('../nodes/lib/jpeg-header');
const { DATASET } = require('./helpers');

async function sharpSays(image) {
  const m = await sharp(image).metadata();
  return { width: m.width, height: m.height, orientation: m.orientation ?? 1 };
}

test('size and orientation agree with sharp for every EXIF orientation, both byte orders and progressive files', async () => {
  const base = sharp({ create: { width: 37, height: 21, channels: 3, background: { r: 200, g: 10, b: 10 } } });
  for (let orientation = 1; orientation <= 8; orientation++) {
    for (const progressive of [false, true]) {
      const image = await base.clone().jpeg({ progressive }).withMetadata({ orientation }).toBuffer();
      assert.deepEqual(readJpegHeader(image), await sharpSays(image), `orientation ${orientation}${progressive ? ', progressive' : ''}`);
    }
  }
  const plain = await base.clone().jpeg().toBuffer();
  assert.deepEqual(readJpegHeader(plain), { width: 37, height: 21, orientation: 1 });
});

test('photos of the dataset read the same as with sharp', { skip: !fs.existsSync(DATASET) && 'no dataset' }, async () => {
  for (const c of fs.readdirSync(DATASET).filter((d) => fs.statSync(path.join(DATASET, d)).isDirectory())) {
    for (const f of fs.readdirSync(path.join(DATASET, c)).slice(0, 3)) {
      const image = fs.readFileSync(path.join(DATASET, c, f));
      assert.deepEqual(readJpegHeader(image), await sharpSays(image), `${c}/${f}`);
    }
  }
});

test('whatever it cannot read exactly is left to sharp (undefined)', async () => {
  const jpeg = await sharp({ create: { width: 8, height: 8, channels: 3, background: '#888' } }).jpeg().withMetadata({ orientation: 3 }).toBuffer();
  assert.equal(readJpegHeader(await sharp(jpeg).png().toBuffer()), undefined);
  assert.equal(readJpegHeader(Buffer.alloc(0)), undefined);
  assert.equal(readJpegHeader(Buffer.from([0xff, 0xd8, 0xff])), undefined);
  assert.equal(readJpegHeader(Buffer.from([0xff, 0xd8, 0x12, 0x34, 0x56, 0x78])), undefined); // not a marker
  // Cut before the frame header.
  const sof = jpeg.findIndex((b, i) => b === 0xff && jpeg[i + 1] === 0xc0);
  assert.equal(readJpegHeader(jpeg.subarray(0, sof + 4)), undefined);
  // An orientation outside 1..8 is sharp's to interpret.
  const exif = jpeg.indexOf(Buffer.from('Exif\0\0'));
  const odd = Buffer.from(jpeg);
  const tiff = exif + 6;
  const little = odd[tiff] === 0x49;
  const ifd = tiff + (little ? odd.readUInt32LE(tiff + 4) : odd.readUInt32BE(tiff + 4));
  const count = little ? odd.readUInt16LE(ifd) : odd.readUInt16BE(ifd);
  let patched = false;
  for (let k = 0; k < count; k++) {
    const entry = ifd + 2 + k * 12;
    if ((little ? odd.readUInt16LE(entry) : odd.readUInt16BE(entry)) === 0x0112) {
      if (little) odd.writeUInt16LE(9, entry + 8);
      else odd.writeUInt16BE(9, entry + 8);
      patched = true;
    }
  }
  assert.ok(patched);
  assert.equal(readJpegHeader(odd), undefined);
});
