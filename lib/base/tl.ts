// TEMPORARY timeline instrumentation (lab only; not to be committed).
import { writeFileSync } from 'node:fs';
const ON = process.env.QG_TL !== undefined;
const marks: Array<[number, string, string]> = [];
export function tl(id: string | undefined, label: string): void {
  if (!ON) return;
  marks.push([Number(process.hrtime.bigint()) / 1e6, id ?? '?', label]);
}
if (ON) process.on('exit', () => writeFileSync(`${process.env.QG_TL}/tl-${process.pid}.json`, JSON.stringify({ server: process.env.SERVER_ID ?? process.env.NODE_ID, marks })));
