// Pre-processing: the pure maths, the spec validation and the real sharp pipeline.
const { test } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('fs');
const path = require('path');
const sharp = require('sharp');
const { pixelsToTensor, imageToTensor, regionTensors } = require('../nodes/lib/preprocess');
const { validatePreprocessSpec, validateRoi, tensorDims } = require('../nodes/lib/preprocess-spec');
const { DATASET } = require('./helpers');

const spec = (over = {}) => validatePreprocessSpec({ width: 2, height: 1, mean: [10, 20, 30], std: [2, 4, 5], ...over });

test('pixelsToTensor normalises (pixel - mean) / std per channel in NCHW', () => {
  // two pixels: (110, 120, 130) and (10, 20, 30)
  const rgb = Uint8Array.from([110, 120, 130, 10, 20, 30]);
  const t = pixelsToTensor(rgb, 2, 1, spec());
  assert.deepEqual(t.dims, [1, 3, 1, 2]);
  assert.equal(t.type, 'float32');
  assert.deepEqual(Array.from(t.data), [50, 0, 25, 0, 20, 0]);
});

test('pixelsToTensor honours BGR order and NHWC layout', () => {
  const rgb = Uint8Array.from([110, 120, 130, 10, 20, 30]);
  const t = pixelsToTensor(rgb, 2, 1, spec({ channels: 'BGR', layout: 'NHWC' }));
  assert.deepEqual(t.dims, [1, 1, 2, 3]);
  // B uses the blue mean/std (30, 5), G (20, 4), R (10, 2)
  assert.deepEqual(Array.from(t.data), [20, 25, 50, 0, 0, 0]);
});

test('pixelsToTensor keeps raw pixels for uint8 models', () => {
  const rgb = Uint8Array.from([110, 120, 130, 10, 20, 30]);
  const t = pixelsToTensor(rgb, 2, 1, spec({ dtype: 'uint8' }));
  assert.ok(t.data instanceof Uint8Array);
  assert.deepEqual(Array.from(t.data), [110, 10, 120, 20, 130, 30]);
});

test('validatePreprocessSpec names the offending field', () => {
  assert.throws(() => validatePreprocessSpec({ width: 0, height: 10 }), /"width" must be a whole number/);
  assert.throws(() => validatePreprocessSpec({ width: 10, height: 10, resize: 'stretch' }), /"resize" must be one of cover, contain, fill/);
  assert.throws(() => validatePreprocessSpec({ width: 10, height: 10, std: [1, 0, 1] }), /"std" values must be greater than 0/);
  assert.throws(() => validatePreprocessSpec({ width: 10, height: 10, mean: [1, 2] }), /"mean" must be three numbers/);
  assert.deepEqual(validatePreprocessSpec({ width: '8', height: 4, mean: '1, 2, 3', std: 2 }).std, [2, 2, 2]);
  assert.deepEqual(tensorDims(validatePreprocessSpec({ width: 8, height: 4, layout: 'nhwc' })), [1, 4, 8, 3]);
});

test('validateRoi accepts fractions inside the frame only', () => {
  assert.deepEqual(validateRoi({ x: 0.25, y: 0, width: 0.5, height: 1 }), { x: 0.25, y: 0, width: 0.5, height: 1 });
  assert.equal(validateRoi({ x: 0, y: 0, width: 1, height: 1 }), undefined);
  assert.throws(() => validateRoi({ x: 0.6, y: 0, width: 0.5, height: 1 }), /inside the frame/);
  assert.throws(() => validateRoi({ x: 10, y: 0, width: 100, height: 100 }), /fractions of the frame/);
});

async function solidJpeg(width, height, rgb) {
  return sharp({ create: { width, height, channels: 3, background: { r: rgb[0], g: rgb[1], b: rgb[2] } } }).png().toBuffer();
}

test('imageToTensor decodes, resizes and normalises a real image with sharp', async () => {
  const image = await solidJpeg(64, 48, [200, 100, 50]);
  const s = validatePreprocessSpec({ width: 16, height: 12, mean: [100, 100, 100], std: [50, 50, 50] });
  const { tensor, sourceWidth, sourceHeight } = await imageToTensor(image, s);
  assert.deepEqual(tensor.dims, [1, 3, 12, 16]);
  assert.equal(sourceWidth, 64);
  assert.equal(sourceHeight, 48);
  const plane = 12 * 16;
  assert.ok(Math.abs(tensor.data[0] - 2) < 0.05, `red ${tensor.data[0]}`);
  assert.ok(Math.abs(tensor.data[plane] - 0) < 0.05, `green ${tensor.data[plane]}`);
  assert.ok(Math.abs(tensor.data[2 * plane] + 1) < 0.05, `blue ${tensor.data[2 * plane]}`);
});

test('contain letterboxes with the mean colour so padding normalises to zero', async () => {
  const image = await solidJpeg(40, 10, [255, 255, 255]);
  const s = validatePreprocessSpec({ width: 10, height: 10, resize: 'contain', mean: [120, 110, 100], std: [60, 60, 60] });
  const { tensor } = await imageToTensor(image, s);
  // first row is padding (the 40x10 image becomes 10x2.5 in the middle)
  for (let c = 0; c < 3; c++) assert.ok(Math.abs(tensor.data[c * 100]) < 0.02, `padding channel ${c} = ${tensor.data[c * 100]}`);
  assert.ok(tensor.data[50] > 2, 'the middle row is the white image');
});

test('a region of interest crops before resizing', async () => {
  // left half black, right half white
  const left = await sharp({ create: { width: 20, height: 10, channels: 3, background: '#000' } }).png().toBuffer();
  const image = await sharp({ create: { width: 40, height: 10, channels: 3, background: '#fff' } })
    .composite([{ input: left, left: 0, top: 0 }]).png().toBuffer();
  const s = validatePreprocessSpec({ width: 4, height: 2, resize: 'fill', std: [1, 1, 1], roi: { x: 0.5, y: 0, width: 0.5, height: 1 } });
  const { tensor } = await imageToTensor(image, s);
  assert.ok(Array.from(tensor.data).every((v) => v > 250), 'only the white half remains');
});

test('grey and alpha images still give three channels', async () => {
  const grey = await sharp({ create: { width: 8, height: 8, channels: 3, background: '#808080' } }).greyscale().png().toBuffer();
  const rgba = await sharp({ create: { width: 8, height: 8, channels: 4, background: { r: 0, g: 255, b: 0, alpha: 0.5 } } }).png().toBuffer();
  const s = validatePreprocessSpec({ width: 4, height: 4, std: [1, 1, 1] });
  assert.deepEqual((await imageToTensor(grey, s)).tensor.dims, [1, 3, 4, 4]);
  assert.deepEqual((await imageToTensor(rgba, s)).tensor.dims, [1, 3, 4, 4]);
});

test('regionTensors decodes once and gives what imageToTensor gives for each region: JPEG, EXIF, grey, alpha, 16-bit', async () => {
  const photo = fs.readFileSync(path.join(DATASET, 'glass', fs.readdirSync(path.join(DATASET, 'glass'))[0]));
  // The same photo stored sideways with EXIF orientation 6, and a grey PNG: regions are of the oriented image.
  const sideways = await sharp(photo).rotate(-90).withMetadata({ orientation: 6 }).jpeg({ quality: 95 }).toBuffer();
  const grey = await sharp(photo).greyscale().png().toBuffer();
  // Transparency (fully transparent on the left, graded to opaque), with colour and grey pixels, PNG and WebP; and a 16-bit PNG.
  const { data: rgb, info } = await sharp(photo).resize(128, 96).raw().toBuffer({ resolveWithObject: true });
  const rgba = Buffer.alloc(info.width * info.height * 4);
  for (let i = 0; i < info.width * info.height; i++) {
    rgba.set(rgb.subarray(i * 3, i * 3 + 3), i * 4);
    rgba[i * 4 + 3] = Math.max(0, Math.min(255, Math.round(((i % info.width) / info.width - 0.3) * 400)));
  }
  const raw = { raw: { width: info.width, height: info.height, channels: 4 } };
  const alphaPng = await sharp(rgba, raw).png().toBuffer();
  const alphaWebp = await sharp(rgba, raw).webp({ lossless: true }).toBuffer();
  const greyAlpha = await sharp(rgba, raw).greyscale().png().toBuffer();
  const png16 = await sharp(photo).resize(128, 96).toColourspace('rgb16').png().toBuffer();
  assert.equal((await sharp(png16).metadata()).depth, 'ushort');
  const regions = [
    { x: 0, y: 0, width: 1, height: 1 },
    { x: 0.1, y: 0.2, width: 0.3, height: 0.25 },
    { x: 0.55, y: 0.6, width: 0.45, height: 0.4 },
  ];
  const cases = [['jpeg', photo], ['exif-rotated', sideways], ['grey png', grey], ['rgba png', alphaPng], ['rgba webp', alphaWebp], ['grey+alpha png', greyAlpha], ['16-bit png', png16]];
  for (const [name, image] of cases) {
    for (const over of [{ resize: 'fill' }, { resize: 'contain' }, { resize: 'cover', layout: 'NHWC', channels: 'BGR' }]) {
      const s = validatePreprocessSpec({ width: 48, height: 40, mean: [124, 116, 104], std: [58, 57, 57], ...over });
      const once = await regionTensors(image, regions, s);
      assert.equal(once.length, regions.length);
      for (const [i, roi] of regions.entries()) {
        const { tensor } = await imageToTensor(image, { ...s, roi });
        assert.deepEqual(once[i].dims, tensor.dims);
        let worst = 0;
        for (let k = 0; k < tensor.data.length; k++) worst = Math.max(worst, Math.abs(once[i].data[k] - tensor.data[k]));
        // Within one grey level (1/57 after normalising): libvips may round a resample differently.
        // Identical, but for the whole frame of a JPEG or WebP: with nothing to cut, imageToTensor
        // lets libjpeg or libwebp decode at a reduced scale (sharp's shrink-on-load), a few grey
        // levels off a full decode (at most 8 for these JPEGs, 13 at the WebP's alpha edge).
        const shrinkOnLoad = i === 0 && ['jpeg', 'exif-rotated', 'rgba webp'].includes(name) && over.resize !== 'cover';
        assert.ok(worst <= (shrinkOnLoad ? 13.01 / 57 : 0), `${name}, ${over.resize}, region ${i}: differs by ${(worst * 57).toFixed(2)} grey levels`);
      }
    }
  }
  assert.deepEqual(await regionTensors(photo, [], validatePreprocessSpec({ width: 4, height: 4 })), []);
  await assert.rejects(regionTensors(Buffer.from('not an image'), regions, validatePreprocessSpec({ width: 4, height: 4 })), /not a decodable image/);
});

test('bad payloads give errors that say what was expected', async () => {
  const s = validatePreprocessSpec({ width: 4, height: 4 });
  const photo = fs.readFileSync(path.join(DATASET, 'glass', fs.readdirSync(path.join(DATASET, 'glass'))[0]));
  await assert.rejects(imageToTensor(Buffer.from('not an image'), s), /not a decodable image.*expected JPEG, PNG or WebP/);
  await assert.rejects(imageToTensor(photo.subarray(0, Math.floor(photo.length / 2)), s), /not a decodable image/);
  await assert.rejects(imageToTensor('hello', s), /must be an image Buffer.*got a string/);
  await assert.rejects(imageToTensor(Buffer.alloc(0), s), /must be an image Buffer/);
});
