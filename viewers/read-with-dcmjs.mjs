// Reads DICOM files with dcmjs (OHIF's DICOM library) and prints, as JSON, what a web viewer gets from them:
// for a SEG each frame's segment, source image and pixels; for an SR its measurement groups and the other
// containers of the report. Used by the tests (tests/viewers.py) beside highdicom's reading of the same files.
//   node viewers/read-with-dcmjs.mjs FILE...
import fs from 'node:fs';
import dcmjs from 'dcmjs';

const { DicomMessage, DicomMetaDictionary, BitArray } = dcmjs.data;
const asArray = value => (value === undefined ? [] : Array.isArray(value) ? value : [value]);
const code = item => asArray(item.ConceptNameCodeSequence)[0] || {};

function frames(ds) {
  const rows = ds.Rows, columns = ds.Columns, count = Number(ds.NumberOfFrames || 1);
  const perFrame = rows * columns;
  const data = new Uint8Array(asArray(ds.PixelData)[0]);
  const bytesPerFrame = ds.BitsAllocated === 1 ? perFrame / 8 : perFrame;
  const needed = Math.ceil(bytesPerFrame * count);
  if (data.length < needed) throw new Error(`Pixel Data holds ${data.length} bytes, ${needed} needed`);
  const unpacked = ds.BitsAllocated === 1 ? BitArray.unpack(data) : data;
  const groups = asArray(ds.PerFrameFunctionalGroupsSequence);
  return Array.from({ length: count }, (_, index) => {
    const group = groups[index] || {};
    const source = asArray(asArray(group.DerivationImageSequence)[0]?.SourceImageSequence)[0] || {};
    const segment = asArray(group.SegmentIdentificationSequence)[0]?.ReferencedSegmentNumber ?? null;
    const pixels = unpacked.subarray(index * perFrame, (index + 1) * perFrame);
    let text = '';
    for (const value of pixels) text += String.fromCharCode(48 + Math.min(value, 9));  // 0..9 (255 -> 9)
    return { segment, source: source.ReferencedSOPInstanceUID ?? null, pixels: text };
  });
}

function srItems(items) {
  return asArray(items).map(item => ({
    valueType: item.ValueType,
    relationship: item.RelationshipType,
    concept: code(item).CodeMeaning ?? null,
    value: item.ValueType === 'NUM' ? Number(asArray(item.MeasuredValueSequence)[0]?.NumericValue) : undefined,
    unit: item.ValueType === 'NUM' ? asArray(asArray(item.MeasuredValueSequence)[0]?.MeasurementUnitsCodeSequence)[0]?.CodeValue : undefined,
    text: item.TextValue ?? item.UID ?? asArray(item.ConceptCodeSequence)[0]?.CodeMeaning,
    graphicType: item.GraphicType,
    points: item.GraphicData ? item.GraphicData.length : undefined,
    children: srItems(item.ContentSequence),
  }));
}

const read = path => {
  const buffer = fs.readFileSync(path);
  const dicom = DicomMessage.readFile(buffer.buffer.slice(buffer.byteOffset, buffer.byteOffset + buffer.byteLength));
  const ds = DicomMetaDictionary.naturalizeDataset(dicom.dict);
  const found = { path, sopClassUid: ds.SOPClassUID, sopInstanceUid: ds.SOPInstanceUID, seriesNumber: ds.SeriesNumber };
  if (ds.Modality === 'SEG') {
    found.segmentationType = ds.SegmentationType;
    found.rows = ds.Rows;
    found.columns = ds.Columns;
    found.segments = asArray(ds.SegmentSequence).map(s => ({
      number: s.SegmentNumber, label: s.SegmentLabel, colour: s.RecommendedDisplayCIELabValue ?? null,
    }));
    found.frames = frames(ds);
  } else if (ds.Modality === 'SR') {
    found.content = srItems(ds.ContentSequence);
  }
  return found;
};

process.stdout.write(JSON.stringify(process.argv.slice(2).map(read)));
