import { createWriteStream } from 'node:fs';
import { lstat, realpath, rename, rm, stat } from 'node:fs/promises';
import { once } from 'node:events';
import { join } from 'node:path';
import type { Writable } from 'node:stream';
import { InvalidArgumentError } from '../errors.js';

/**
 * Where `lethe export -o` writes, decided from what the path is before anything is written:
 *
 * - no `-o`: standard output, the document and a newline (for a terminal);
 * - `-o -`: standard output, exactly the document (so its SHA-256 is the trailer's);
 * - a path that does not exist, or a regular file: written to `<path>.partial` and renamed over
 *   the path only once the digest checked out, so a failed export never leaves a torn file;
 * - a character device (`/dev/null`, a terminal) or a FIFO: written in place, as they cannot be
 *   replaced (renaming over `/dev/null` would replace the device with a regular file);
 * - a symbolic link: the same rules for what it points to (a link to a regular file keeps the
 *   link and replaces the file it names); a dangling link is refused;
 * - a directory, a socket or a block device: refused, before the export starts.
 */
type OutputTarget =
  | { readonly kind: 'stdout'; readonly trailingNewline: boolean }
  | { readonly kind: 'in-place'; readonly path: string }
  | { readonly kind: 'replace'; readonly path: string };

async function outputTarget(option: string | undefined): Promise<OutputTarget> {
  if (option === undefined) return { kind: 'stdout', trailingNewline: true };
  if (option === '-') return { kind: 'stdout', trailingNewline: false };
  const entry = await lstat(option).catch(ifMissing(undefined));
  if (entry === undefined) return { kind: 'replace', path: option };
  const path = entry.isSymbolicLink() ? await realpath(option).catch(ifMissing(undefined)) : option;
  if (path === undefined) throw new InvalidArgumentError(`-o ${option}: is a symbolic link to nothing; give the path of the file to write`);
  const s = await stat(path);
  if (s.isDirectory()) throw new InvalidArgumentError(`-o ${option}: is a directory; give a file name, such as ${join(option, 'export.json')}`);
  if (s.isFile()) return { kind: 'replace', path };
  if (s.isCharacterDevice() || s.isFIFO()) return { kind: 'in-place', path };
  throw new InvalidArgumentError(`-o ${option}: is not a regular file, a character device or a FIFO`);
}

function ifMissing<T>(value: T) {
  return (err: NodeJS.ErrnoException): T => {
    if (err.code === 'ENOENT') return value;
    throw err;
  };
}

export type Write = (chunk: string | Uint8Array) => Promise<void>;

/**
 * Writes a document to `option` (see OutputTarget): `receive` streams it through `write` and
 * throws when it does not verify; returns the summary it gave. Each write waits until its chunk
 * is handed to the system, so a slow disk or reader slows the stream.
 */
export async function writeOutput(option: string | undefined, receive: (write: Write) => Promise<string>): Promise<string> {
  const target = await outputTarget(option);
  const partial = target.kind === 'replace' ? `${target.path}.partial` : undefined;
  // A stale .partial (an interrupted run) goes; a new one is created exclusively, so a link
  // planted under that name is never followed.
  if (partial !== undefined) await rm(partial, { force: true });
  const out: Writable =
    target.kind === 'stdout'
      ? process.stdout
      : createWriteStream(partial ?? target.path, partial === undefined ? { flags: 'w' } : { flags: 'wx', mode: 0o600 });
  // Write errors reach the write callbacks below (EPIPE: the reader went away); without a
  // listener the stream's 'error' event would also crash the process.
  const ignore = () => undefined;
  out.on('error', ignore);
  // A FIFO opens once a reader does.
  if (out !== process.stdout) await once(out, 'open');
  const write: Write = (chunk) => new Promise<void>((resolve, reject) => out.write(chunk, (err) => (err ? reject(err) : resolve())));
  try {
    const summary = await receive(write);
    if (target.kind === 'stdout') {
      if (target.trailingNewline) await write('\n');
    } else {
      out.end();
      await once(out, 'finish');
      if (partial !== undefined) await rename(partial, target.path);
    }
    return summary;
  } catch (err) {
    if (out !== process.stdout) out.destroy();
    if (partial !== undefined) await rm(partial, { force: true });
    throw err;
  }
}
