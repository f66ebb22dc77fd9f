import { randomBytes, randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { CoreV1Api, CustomObjectsApi } from '@kubernetes/client-node';
import { pino } from 'pino';
import { mintLocalToken } from '../src/auth/local-key.js';
import { connectPrivacyService } from '../src/client/privacy-client.js';
import { EventRecorder } from '../src/operator/event-recorder.js';
import { GROUP, PLURAL, type PrivacyRequestResource, VERSION, splitKey } from '../src/operator/privacy-request.js';
import { PrivacyRequestCache } from '../src/operator/watch-cache.js';
import { loadKubeConfig } from '../src/kube/kube-config.js';
import { openDatabase } from '../src/store/database.js';
import { type KubeApiServer, requireKubeAssets, startKubeApiServer } from '../test/support/kube-apiserver.js';
import { installCrd, kubectlFor, mustKubectl } from '../test/support/kubectl.js';
import { type PostgresCluster, freePort, requirePostgres, startPostgres } from '../test/support/postgres.js';
import { cpuMetersOf, cpuSeconds, findPid, postmasterPid, treeCpuSeconds } from './fanout/cpu.js';
import { LetheProcess, grpcServing } from './fanout/processes.js';
import { intFlag } from './flags.js';
import { seedIdentity, userId } from './fanout/services.js';

/**
 * The operator benchmark: a real kube-apiserver, PostgreSQL and a Lethe server process. N Forget
 * PrivacyRequests (default 1,000) are created at once (64 creates in flight) and the bench
 * measures the seconds from the first create until every one reports phase Succeeded (seen
 * through a watch), with `lethe operator` in a process of its own at its default concurrency.
 * Next to it, the same number of forgets (other users) through direct gRPC ForgetUser calls,
 * with as many calls in flight as the operator has workers, and the ratio of the two.
 * No downstream services are configured, so a forget completes when the database is anonymized.
 * Before the figures: the CPU seconds each process used from the first create until the last
 * Succeeded (the API server's share explains most of the ratio on a small machine).
 *
 * Then the API server's floor: in a namespace the operator does not watch, the same number of
 * resources created the same way, each given a Succeeded status (one status write, as the
 * operator writes for a request answered at once) and one Event as soon as its create returns,
 * with no Lethe call at all. `apiserver_floor_seconds` is what any operator needs on this
 * machine before it does any work, and `floor_ratio` sets it against the direct path.
 * `cpu_floor_seconds` adds the work that cannot overlap for free on a small machine: the CPU
 * seconds of the floor phase and of the direct phase (server and PostgreSQL), divided by the
 * cores. It is the least time the operator's path can take here even with an operator that
 * costs nothing and every core busy throughout; `cpu_floor_ratio` sets it against the direct path.
 *
 * Flags: --count N (default 1000), --concurrency N (the operator's workers and the direct
 * calls in flight; default 4, the operator's default).
 */

const PRINCIPAL = 'bench-operator';
const NAMESPACE = 'bench';
const FLOOR_NAMESPACE = 'bench-floor';
const CREATES_IN_FLIGHT = 64;

export async function run(args: string[]): Promise<void> {
  const count = intFlag(args, '--count', 1000);
  const concurrency = intFlag(args, '--concurrency', 4);
  const pgBin = requirePostgres();
  if (pgBin === undefined) throw new Error('PostgreSQL binaries not found: apt-get install -y postgresql, or set LETHE_PG_BIN');
  const assets = requireKubeAssets();
  if (assets === undefined) throw new Error('kube-apiserver not found: export KUBEBUILDER_ASSETS="$(scripts/setup-kube-assets.sh)"');

  const dataDir = mkdtempSync(join(tmpdir(), 'lethe-bench-operator-'));
  const processes: LetheProcess[] = [];
  let cluster: PostgresCluster | undefined;
  let kube: KubeApiServer | undefined;
  try {
    [cluster, kube] = await Promise.all([startPostgres(pgBin), startKubeApiServer(assets)]);
    const kubectl = kubectlFor(assets, kube.kubeconfigPath);
    await installCrd(kubectl);
    await mustKubectl(kubectl, ['create', 'namespace', NAMESPACE]);

    const databaseUrl = await cluster.createDatabase('lethe_operator_bench');
    const port = await freePort();
    const server = new LetheProcess('server', ['serve', '--listen', `127.0.0.1:${port}`, '--data-dir', dataDir], {
      DATABASE_URL: databaseUrl,
      LETHE_ARTIFACT_KEY: randomBytes(32).toString('hex'),
      LETHE_MIGRATE_IDENTITY_SCHEMA: 'true',
      LETHE_LOG_LEVEL: 'warn',
      LETHE_PLATFORM_PRINCIPALS: PRINCIPAL,
    });
    processes.push(server);
    await server.waitReady(() => grpcServing(`127.0.0.1:${port}`));
    const identity = await openDatabase({ kind: 'postgres', url: databaseUrl, poolMax: 1 });
    await seedIdentity(identity.knex, 2 * count).finally(() => identity.close());
    const token = await mintLocalToken(dataDir, PRINCIPAL, 3600);

    // Direct gRPC: users count+1 … 2·count, `concurrency` calls in flight.
    const grpc = connectPrivacyService(`127.0.0.1:${port}`, token);
    for (let i = 0; i < 10; i++) await grpc.client.getPrivacyRequest({ id: randomUUID() }).catch(() => undefined);
    let next = 0;
    // What the forgets themselves cost, in both phases: the server and PostgreSQL.
    const letheMeters: Array<[string, () => number]> = [
      ['server', () => cpuSeconds(server.pid)],
      ['postgres', () => treeCpuSeconds(postmasterPid(cluster?.dataDir ?? ''))],
    ];
    const directMeter = cpuMetersOf(letheMeters);
    const directStart = performance.now();
    await Promise.all(
      Array.from({ length: concurrency }, async () => {
        for (let i = next++; i < count; i = next++) {
          await grpc.client.forgetUser({ userId: userId(count + 1 + i), reason: 'benchmark', idempotencyKey: randomUUID() });
        }
      }),
    );
    const directSeconds = (performance.now() - directStart) / 1000;
    const directCpu = directMeter.read().perProcess;
    grpc.close();

    const healthPort = await freePort();
    const operator = new LetheProcess('operator', ['operator'], {
      KUBECONFIG: kube.kubeconfigPath,
      LETHE_SERVER: `127.0.0.1:${port}`,
      LETHE_TOKEN: token,
      LETHE_OPERATOR_NAMESPACES: NAMESPACE,
      LETHE_OPERATOR_CONCURRENCY: String(concurrency),
      LETHE_LEADER_ELECTION_NAMESPACE: NAMESPACE,
      LETHE_HEALTH_LISTEN: `127.0.0.1:${healthPort}`,
      LETHE_LOG_LEVEL: process.env.BENCH_OPERATOR_LOG_LEVEL ?? 'warn',
    });
    processes.push(operator);
    await operator.waitReady(async () => (await fetch(`http://127.0.0.1:${healthPort}/readyz`)).status === 200);

    const apiServerPid = findPid([join(assets, 'kube-apiserver'), `--secure-port=${kube.port}`]);
    const etcdPid = findPid([join(assets, 'etcd'), `--listen-client-urls=${kube.etcdUrl}`]);
    const meters: Array<[string, () => number]> = [
      ['kube-apiserver', () => cpuSeconds(apiServerPid)],
      ['etcd', () => cpuSeconds(etcdPid)],
      ['operator', () => cpuSeconds(operator.pid)],
      ...letheMeters,
    ];
    const operatorCpu = cpuMetersOf(meters);
    const kc = loadKubeConfig({ source: 'kubeconfig', path: kube.kubeconfigPath });
    const api = kc.makeApiClient(CustomObjectsApi);
    // Completion is observed through the operator's own watch cache (re-listing, restarting):
    // polling a list of 1,000 resources would load the API server more than the operator does.
    const phases = new Map<string, string>();
    let onPhase = () => {};
    const watcher = new PrivacyRequestCache(kc, {
      namespaces: [NAMESPACE],
      logger: pino({ level: 'warn' }, pino.destination(2)),
      onChange: (key) => {
        const { namespace, name } = splitKey(key);
        const obj = watcher.get(namespace, name);
        if (obj !== undefined) phases.set(key, obj.status?.phase ?? 'Pending');
        onPhase();
      },
    });
    await watcher.start();
    const operatorStart = performance.now();
    await createRequests(api, NAMESPACE, count);
    const createSeconds = (performance.now() - operatorStart) / 1000;
    const outcome = await new Promise<{ succeeded: number; failed: number }>((resolve) => {
      const tally = () => {
        const values = [...phases.values()];
        return { succeeded: values.filter((p) => p === 'Succeeded').length, failed: values.filter((p) => p === 'Failed').length };
      };
      const timer = setTimeout(() => resolve(tally()), 600_000);
      onPhase = () => {
        const t = tally();
        if (t.succeeded + t.failed < count) return;
        clearTimeout(timer);
        resolve(t);
      };
    });
    const operatorSeconds = (performance.now() - operatorStart) / 1000;
    await watcher.stop();
    if (outcome.succeeded !== count) {
      const listed = (await api.listNamespacedCustomObject({ group: GROUP, version: VERSION, namespace: NAMESPACE, plural: PLURAL })) as {
        items: Array<{ status?: { phase?: string } }>;
      };
      const byPhase = new Map<string, number>();
      for (const r of listed.items) byPhase.set(r.status?.phase ?? 'none', (byPhase.get(r.status?.phase ?? 'none') ?? 0) + 1);
      throw new Error(
        `after 600 s the watch saw ${outcome.succeeded} of ${count} Succeeded; the API server lists ${JSON.stringify(Object.fromEntries(byPhase))}`,
      );
    }
    const cpuText = (perProcess: ReadonlyArray<[string, number]>) => perProcess.map(([name, seconds]) => `${name} ${seconds.toFixed(1)}`).join(', ');
    const cpu = cpuText(operatorCpu.read().perProcess);

    const [done] = (
      (await api.listNamespacedCustomObject({ group: GROUP, version: VERSION, namespace: NAMESPACE, plural: PLURAL, limit: 1 })) as {
        items: PrivacyRequestResource[];
      }
    ).items;
    const status = done?.status;
    if (status === undefined) throw new Error('no Succeeded PrivacyRequest to copy a status from');
    await mustKubectl(kubectl, ['create', 'namespace', FLOOR_NAMESPACE]);
    const events = new EventRecorder(kc.makeApiClient(CoreV1Api), 'bench', pino({ level: 'warn' }, pino.destination(2)));
    const floorMeter = cpuMetersOf(meters);
    const floorStart = performance.now();
    await createRequests(api, FLOOR_NAMESPACE, count, async (created) => {
      const updated = (await api.replaceNamespacedCustomObjectStatus({
        group: GROUP,
        version: VERSION,
        plural: PLURAL,
        namespace: FLOOR_NAMESPACE,
        name: created.metadata.name ?? '',
        body: { ...created, status },
      })) as PrivacyRequestResource;
      await events.record(updated, 'Normal', 'Erased', 'benchmark: the status the operator writes, without the operator');
    });
    const floorSeconds = (performance.now() - floorStart) / 1000;
    const floorCpu = floorMeter.read().perProcess;
    // The operator's path needs at least the API server's floor work and the forgets' own work
    // (the direct phase's), on the same cores, even with an operator that costs nothing.
    const sum = (perProcess: ReadonlyArray<[string, number]>) => perProcess.reduce((total, [, seconds]) => total + seconds, 0);
    const cpuFloorSeconds = (sum(floorCpu) + sum(directCpu)) / cpus().length;

    console.log(`machine: ${cpus().length} × ${cpus()[0]?.model ?? 'cpu'}`);
    console.log(`operator phase CPU seconds: ${cpu}`);
    console.log(`floor phase CPU seconds: ${cpuText(floorCpu)}`);
    console.log(`direct phase CPU seconds: ${cpuText(directCpu)}`);
    console.log(`creates_seconds: ${createSeconds.toFixed(2)}`);
    console.log(`resources: ${count}`);
    console.log(`concurrency: ${concurrency}`);
    console.log(`operator_seconds: ${operatorSeconds.toFixed(2)}`);
    console.log(`direct_grpc_seconds: ${directSeconds.toFixed(2)}`);
    console.log(`apiserver_floor_seconds: ${floorSeconds.toFixed(2)}`);
    console.log(`floor_ratio: ${(floorSeconds / directSeconds).toFixed(2)}`);
    console.log(`cpu_floor_seconds: ${cpuFloorSeconds.toFixed(2)}`);
    console.log(`cpu_floor_ratio: ${(cpuFloorSeconds / directSeconds).toFixed(2)}`);
    console.log(`ratio: ${(operatorSeconds / directSeconds).toFixed(2)}`);
  } finally {
    for (const p of processes.reverse()) await p.stop();
    await kube?.destroy();
    await cluster?.stop();
    rmSync(dataDir, { recursive: true, force: true });
  }
}

/** Creates `count` Forget PrivacyRequests, CREATES_IN_FLIGHT at a time; `then` runs for each as its create returns. */
async function createRequests(
  api: CustomObjectsApi,
  namespace: string,
  count: number,
  then?: (created: PrivacyRequestResource) => Promise<void>,
): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: CREATES_IN_FLIGHT }, async () => {
      for (let i = next++; i < count; i = next++) {
        const created = (await api.createNamespacedCustomObject({
          group: GROUP,
          version: VERSION,
          namespace,
          plural: PLURAL,
          body: {
            apiVersion: `${GROUP}/${VERSION}`,
            kind: 'PrivacyRequest',
            metadata: { name: `forget-${i + 1}` },
            spec: { type: 'Forget', subjectId: userId(i + 1), reason: 'benchmark', requestedBy: 'bench' },
          },
        })) as PrivacyRequestResource;
        await then?.(created);
      }
    }),
  );
}
