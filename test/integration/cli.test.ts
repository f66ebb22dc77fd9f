import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream, existsSync, lstatSync, mkdtempSync, readFileSync, readlinkSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort } from '../support/postgres.js';

/**
 * The `lethe` command as a newcomer runs it: `lethe serve --demo` on the embedded database,
 * then the client commands against it. Runs the built bin/lethe.js (npm test builds first).
 */

const LETHE = join(process.cwd(), 'bin', 'lethe.js');
const run = promisify(execFile);

describe('the lethe command on the embedded default', () => {
  let dataDir: string;
  let server: ChildProcess;
  let address: string;
  let log = '';

  const lethe = async (...args: string[]) => {
    try {
      const { stdout, stderr } = await run('node', [LETHE, ...args, '--server', address, '--data-dir', dataDir], { encoding: 'utf8' });
      return { code: 0, stdout, stderr };
    } catch (err) {
      const e = err as { code: number; stdout: string; stderr: string };
      return { code: e.code, stdout: e.stdout, stderr: e.stderr };
    }
  };

  beforeAll(async () => {
    dataDir = mkdtempSync(join(tmpdir(), 'lethe-cli-'));
    address = `127.0.0.1:${await freePort()}`;
    server = spawn('node', [LETHE, 'serve', '--demo', '--listen', address, '--http-listen', '127.0.0.1:0', '--data-dir', dataDir], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    server.stdout?.on('data', (d: Buffer) => (log += d.toString()));
    server.stderr?.on('data', (d: Buffer) => (log += d.toString()));
    const deadline = Date.now() + 60_000;
    while (!log.includes('lethe PrivacyService listening')) {
      if (server.exitCode !== null || Date.now() > deadline) throw new Error(`lethe serve did not start:\n${log}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  });

  afterAll(() => {
    if (server.exitCode === null) server.kill('SIGKILL');
    rmSync(dataDir, { recursive: true, force: true });
  });

  it('logs where it listens, which database and which data map, and no personal data', () => {
    const line = JSON.parse(log.split('\n').find((l) => l.includes('lethe PrivacyService listening')) ?? '{}') as Record<string, string>;
    expect(line.listen).toBe(address);
    expect(line.database).toBe(`embedded PGlite in ${join(dataDir, 'pgdata')}`);
    expect(line.dataMap).toMatch(/datamaps\/identity\.yaml$/);
  });

  it('exports user-id-123 to a file whose SHA-256 is the verified trailer digest', async () => {
    const out = join(dataDir, 'user-id-123.json');
    const r = await lethe('export', 'user-id-123', '-o', out);
    expect(r.code).toBe(0);
    const digest = /sha256 ([0-9a-f]{64}) \(verified\)/.exec(r.stderr)?.[1];
    const bytes = readFileSync(out);
    expect(createHash('sha256').update(bytes).digest('hex')).toBe(digest);
    const doc = JSON.parse(bytes.toString('utf8')) as { user_id: string; login_events_count: number; login_events: unknown[] };
    expect(doc).toMatchObject({ user_id: 'user-id-123', login_events_count: 247 });
    expect(doc.login_events).toHaveLength(50);
  });

  describe('where -o writes', () => {
    const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');
    const digestOf = (stderr: string) => /sha256 ([0-9a-f]{64}) \(verified\)/.exec(stderr)?.[1];
    const exportTo = (target: string) => lethe('export', 'user-id-123', '--as', 'platform-owner-id', '-o', target);

    it('writes /dev/null in place: it stays a character device', async () => {
      const r = await exportTo('/dev/null');
      expect(r.code).toBe(0);
      expect(r.stderr).toMatch(/^wrote \/dev\/null: 59 records, sha256 [0-9a-f]{64} \(verified\)/);
      expect(statSync('/dev/null').isCharacterDevice()).toBe(true);
      expect(existsSync('/dev/null.partial')).toBe(false);
    });

    it('writes exactly the document to standard output with -o - (the same bytes as a file)', async () => {
      const r = await run('node', [LETHE, 'export', 'user-id-123', '--as', 'platform-owner-id', '-o', '-', '--server', address, '--data-dir', dataDir], {
        encoding: 'buffer',
      });
      const file = join(dataDir, 'stdout-twin.json');
      const twin = await exportTo(file);
      expect(twin.code).toBe(0);
      expect(sha256(r.stdout)).toBe(digestOf(r.stderr.toString()));
      expect(r.stdout.equals(readFileSync(file))).toBe(true);
    });

    it('writes into a FIFO', async () => {
      const fifo = join(dataDir, 'export.fifo');
      await run('mkfifo', [fifo]);
      const chunks: Buffer[] = [];
      const read = new Promise<void>((resolve, reject) =>
        createReadStream(fifo)
          .on('data', (c) => chunks.push(Buffer.from(c)))
          .on('end', resolve)
          .on('error', reject),
      );
      const r = await exportTo(fifo);
      await read;
      expect(r.code).toBe(0);
      expect(sha256(Buffer.concat(chunks))).toBe(digestOf(r.stderr));
      expect(statSync(fifo).isFIFO()).toBe(true);
    });

    it('refuses a directory, before exporting, with a clear message', async () => {
      const dir = mkdtempSync(join(dataDir, 'out-'));
      const r = await exportTo(dir);
      expect(r.code).toBe(1);
      expect(r.stderr).toBe(`lethe: -o ${dir}: is a directory; give a file name, such as ${join(dir, 'export.json')}\n`);
      expect(statSync(dir).isDirectory()).toBe(true);
    });

    it('follows a symbolic link to a regular file (the link stays), and refuses a dangling one', async () => {
      const file = join(dataDir, 'linked.json');
      const link = join(dataDir, 'link.json');
      writeFileSync(file, 'old');
      symlinkSync(file, link);
      const r = await exportTo(link);
      expect(r.code).toBe(0);
      expect(lstatSync(link).isSymbolicLink()).toBe(true);
      expect(readlinkSync(link)).toBe(file);
      expect(sha256(readFileSync(file))).toBe(digestOf(r.stderr));
      const dangling = join(dataDir, 'dangling.json');
      symlinkSync(join(dataDir, 'missing', 'x.json'), dangling);
      expect(await exportTo(dangling)).toMatchObject({
        code: 1,
        stderr: `lethe: -o ${dangling}: is a symbolic link to nothing; give the path of the file to write\n`,
      });
    });
  });

  it('mints tokens with the local key and enforces the rules', async () => {
    const token = await run('node', [LETHE, 'token', '--as', 'owner-user-id-1', '--data-dir', dataDir], { encoding: 'utf8' });
    const claims = JSON.parse(Buffer.from(token.stdout.trim().split('.')[1] ?? '', 'base64url').toString('utf8')) as Record<string, unknown>;
    expect(claims).toMatchObject({ sub: 'owner-user-id-1', iss: 'lethe-local', aud: 'lethe' });
    expect(Number(claims.exp) - Number(claims.iat)).toBe(900);
    const refused = await lethe('forget', 'user-id-123', '--reason', 'GDPR Right to be Forgotten', '--as', 'owner-user-id-1');
    expect(refused.code).toBe(1);
    expect(refused.stderr.trim()).toBe("lethe: PERMISSION_DENIED: You must be an owner of organization 'dev-team' to anonymize this user");
    const missing = await lethe('export', 'nobody', '--as', 'platform-owner-id');
    expect(missing).toMatchObject({ code: 1, stderr: 'lethe: NOT_FOUND: User not found\n' });
  });

  it('forgets, then lists and shows the request', async () => {
    const r = await lethe('forget', 'user-id-123', '--reason', 'GDPR Right to be Forgotten', '--as', 'owner-user-id-2');
    expect(r.code).toBe(0);
    const result = JSON.parse(r.stdout) as { success: boolean; message: string; request_id: string };
    expect(result).toMatchObject({ success: true, message: 'User data has been anonymized. PII has been removed while preserving audit logs.' });
    const list = await lethe('requests', 'list', '--as', 'platform-owner-id', '--subject', 'user-id-123');
    expect(list.stdout).toContain(result.request_id);
    const get = await lethe('requests', 'get', result.request_id, '--as', 'owner-user-id-2');
    expect(JSON.parse(get.stdout)).toMatchObject({
      id: result.request_id,
      type: 'forget',
      state: 'completed',
      subject_id: 'user-id-123',
      requester: 'owner-user-id-2',
    });
  });

  it("schedules a person's own erasure, lists what is due soon as JSON, and cancels it", async () => {
    const r = await lethe('forget', 'member-user-id-456', '--reason', 'closing my account', '--as', 'member-user-id-456');
    expect(r.code).toBe(0);
    const scheduled = JSON.parse(r.stdout) as { scheduled: boolean; scheduled_for: string; request_id: string };
    expect(scheduled).toMatchObject({ success: true, scheduled: true });
    const soon = await lethe('requests', 'list', '--due-within', '40d', '--json', '--as', 'platform-owner-id');
    expect((JSON.parse(soon.stdout) as Array<{ id: string; state: string }>).find((x) => x.id === scheduled.request_id)).toMatchObject({
      state: 'scheduled',
      scheduled_for: scheduled.scheduled_for,
    });
    const bad = await lethe('requests', 'list', '--due-within', 'soon', '--as', 'platform-owner-id');
    expect(bad.code).not.toBe(0);
    expect(bad.stderr).toContain("option '--due-within <duration>' argument 'soon' is invalid. must be a duration such as 24h or 7d");
    const cancelled = await lethe('requests', 'cancel', scheduled.request_id, '--as', 'member-user-id-456');
    expect(JSON.parse(cancelled.stdout)).toMatchObject({ id: scheduled.request_id, state: 'cancelled' });
  });

  it('prints one clear line for a server that is not there', async () => {
    const port = await freePort();
    const { code, stderr } = await run('node', [LETHE, 'export', 'user-id-123', '--server', `127.0.0.1:${port}`, '--data-dir', dataDir]).then(
      () => ({ code: 0, stderr: '' }),
      (e: { code: number; stderr: string }) => e,
    );
    expect(code).toBe(1);
    expect(stderr.trim().split('\n')).toHaveLength(1);
    expect(stderr).toMatch(/^lethe: UNAVAILABLE: /);
  });

  it('shuts down in order on SIGTERM', async () => {
    const exited = new Promise<number | null>((resolve) => server.once('exit', (code) => resolve(code)));
    server.kill('SIGTERM');
    expect(await exited).toBe(0);
    expect(log).toContain('"msg":"shutting down"');
    expect(log).toContain('"msg":"stopped"');
    expect(log).not.toMatch(/@example\.com|203\.0\.113/);
  });
});
