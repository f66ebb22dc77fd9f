import type { ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { accessSync, constants, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { request as httpsRequest } from 'node:https';
import { homedir, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { makePki, renderKubeconfig } from './kube-pki.js';
import { type Logged, freePortExcept, hasExited, spawnLogged, terminate, waitUntil } from './processes.js';

/**
 * An envtest-style control plane for integration tests: a real etcd and kube-apiserver on free
 * loopback ports, with a throwaway CA, an admin client certificate (group system:masters), RBAC
 * authorization and service-account token signing (TokenRequest, /openid/v1/jwks). There is no
 * controller-manager or scheduler: nothing reconciles (no default ServiceAccount per namespace,
 * namespaces deleted stay Terminating, pods stay Pending).
 *
 * The binaries come from scripts/setup-kube-assets.sh (built from the Go module proxy and cached
 * outside the repository); KUBEBUILDER_ASSETS, the ecosystem's variable, overrides the cache.
 */

const repoRoot = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const SETUP_KUBE_ASSETS = 'scripts/setup-kube-assets.sh';

/** The Kubernetes version scripts/setup-kube-assets.sh pins (read from it: one source of truth). */
export const KUBE_VERSION: string = (() => {
  const script = readFileSync(join(repoRoot, SETUP_KUBE_ASSETS), 'utf8');
  const m = /^KUBE_VERSION=(\d+\.\d+\.\d+)\s*$/m.exec(script);
  if (m?.[1] === undefined) throw new Error(`no KUBE_VERSION=x.y.z line in ${SETUP_KUBE_ASSETS}`);
  return m[1];
})();

/** Where scripts/setup-kube-assets.sh caches the pinned version's binaries. */
export function kubeAssetsCacheDir(): string {
  const root = nonEmpty(process.env.LETHE_KUBE_ASSETS_CACHE) ?? join(nonEmpty(process.env.XDG_CACHE_HOME) ?? join(homedir(), '.cache'), 'lethe', 'kube-assets');
  return join(root, KUBE_VERSION);
}

/** KUBEBUILDER_ASSETS when it holds kube-apiserver and etcd, else the cache for the pinned version. */
function findKubeAssets(): string | undefined {
  const candidates = [nonEmpty(process.env.KUBEBUILDER_ASSETS), kubeAssetsCacheDir()];
  return candidates.find((d): d is string => d !== undefined && isExecutable(join(d, 'kube-apiserver')) && isExecutable(join(d, 'etcd')));
}

/** findKubeAssets(), or: undefined with a warning locally, an error under CI=true. */
export function requireKubeAssets(): string | undefined {
  const dir = findKubeAssets();
  if (dir === undefined) {
    const how = `export KUBEBUILDER_ASSETS="$(${SETUP_KUBE_ASSETS})"  (builds kube-apiserver, etcd and kubectl v${KUBE_VERSION} with Go into ${kubeAssetsCacheDir()})`;
    if (process.env.CI === 'true') throw new Error(`kube-apiserver/etcd not found (CI=true forbids skipping): ${how}`);
    console.warn(`kube-apiserver/etcd not found: skipping the Kubernetes API suites. To run them: ${how}`);
  }
  return dir;
}

interface KubeResponse {
  readonly status: number;
  readonly headers: Record<string, string | string[] | undefined>;
  readonly body: string;
}

interface KubeRequestOptions {
  /** JSON-encoded unless a string. */
  readonly body?: unknown;
  readonly contentType?: string;
  /** No client certificate: the request is system:anonymous (or whatever `headers` authenticate). */
  readonly anonymous?: boolean;
  readonly headers?: Record<string, string>;
  readonly timeoutMs?: number;
}

export interface KubeApiServer {
  /** https://127.0.0.1:<port> */
  readonly url: string;
  readonly port: number;
  readonly etcdUrl: string;
  /** A kubeconfig file for the admin (client certificate, group system:masters), data inlined. */
  readonly kubeconfigPath: string;
  readonly kubeconfig: string;
  /** --service-account-issuer (the API server's own URL); tokens carry it as `iss`. */
  readonly serviceAccountIssuer: string;
  /** PEM: the CA that signed the serving and client certificates; the admin's certificate and key. */
  readonly tls: { readonly ca: string; readonly cert: string; readonly key: string };
  /** Milliseconds from spawn to ready, each. */
  readonly startup: { readonly etcdMs: number; readonly apiServerMs: number };
  /** One HTTPS request as the admin (or anonymously), with node:https (fetch cannot present a client certificate). */
  request(method: string, path: string, options?: KubeRequestOptions): Promise<KubeResponse>;
  /** Writes a kubeconfig that authenticates with `token` (e.g. a ServiceAccount's, from TokenRequest); returns its path. */
  kubeconfigForToken(token: string): string;
  /** Stops kube-apiserver only; etcd keeps the data (clients see the API server restart). */
  stopApiServer(): Promise<void>;
  /** Starts kube-apiserver again on the same port, etcd and certificates; resolves when it is ready. */
  startApiServer(): Promise<void>;
  /** Stops kube-apiserver then etcd (SIGTERM, SIGKILL after a grace period). Idempotent. */
  stop(): Promise<void>;
  /** stop() and remove the temporary directory (certificates, keys, etcd data). */
  destroy(): Promise<void>;
}

export interface StartKubeApiServerOptions {
  /** Appended to kube-apiserver's arguments (a later --flag=value wins over the default). */
  readonly extraArgs?: readonly string[];
  readonly readyTimeoutMs?: number;
}

export async function startKubeApiServer(assetsDir: string, options: StartKubeApiServerOptions = {}): Promise<KubeApiServer> {
  const dir = mkdtempSync(join(tmpdir(), 'lethe-kube-'));
  const children: ChildProcess[] = [];
  // A test run that dies must not leave etcd or kube-apiserver (or their files) behind.
  const killAll = () => {
    for (const c of children) if (!hasExited(c)) c.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  };
  process.once('exit', killAll);
  let stopped = false;
  const stop = async () => {
    if (stopped) return;
    stopped = true;
    // kube-apiserver first: etcd going away under it only produces noise.
    for (const c of [...children].reverse()) await terminate(c, 10_000);
    process.removeListener('exit', killAll);
  };

  try {
    const pki = makePki(join(dir, 'pki'));

    // etcd
    const clientPort = await freePortExcept([]);
    const peerPort = await freePortExcept([clientPort]);
    const etcdUrl = `http://127.0.0.1:${clientPort}`;
    const peerUrl = `http://127.0.0.1:${peerPort}`;
    const etcdStarted = Date.now();
    const etcd = spawnLogged(join(assetsDir, 'etcd'), [
      '--name=lethe',
      `--data-dir=${join(dir, 'etcd')}`,
      `--listen-client-urls=${etcdUrl}`,
      `--advertise-client-urls=${etcdUrl}`,
      `--listen-peer-urls=${peerUrl}`,
      `--initial-advertise-peer-urls=${peerUrl}`,
      `--initial-cluster=lethe=${peerUrl}`,
      '--initial-cluster-state=new',
      '--unsafe-no-fsync=true',
      '--log-level=warn',
    ]);
    children.push(etcd.child);
    await waitUntil('etcd', etcd, 20_000, async () => {
      const res = await fetch(`${etcdUrl}/health`, { signal: AbortSignal.timeout(2_000) });
      return res.ok && ((await res.json()) as { health?: string }).health === 'true';
    });
    const etcdMs = Date.now() - etcdStarted;

    // kube-apiserver
    const port = await freePortExcept([clientPort, peerPort]);
    const url = `https://127.0.0.1:${port}`;
    const serviceAccountIssuer = url;
    const apiArgs = [
      `--etcd-servers=${etcdUrl}`,
      '--bind-address=127.0.0.1',
      '--advertise-address=127.0.0.1',
      // 1.37 refuses a loopback advertise address with the default (lease) endpoint reconciler;
      // with none, the `kubernetes` Service simply has no endpoints, which no test here needs.
      '--endpoint-reconciler-type=none',
      `--secure-port=${port}`,
      `--cert-dir=${join(dir, 'apiserver')}`,
      `--tls-cert-file=${pki.serverCertPath}`,
      `--tls-private-key-file=${pki.serverKeyPath}`,
      `--client-ca-file=${pki.caCertPath}`,
      '--service-cluster-ip-range=10.0.0.0/24',
      `--service-account-issuer=${serviceAccountIssuer}`,
      `--service-account-key-file=${pki.saPublicKeyPath}`,
      `--service-account-signing-key-file=${pki.saPrivateKeyPath}`,
      '--authorization-mode=RBAC',
      // Without a controller-manager no namespace gets its `default` ServiceAccount, and this
      // plugin would then reject every pod; envtest disables it for the same reason.
      '--disable-admission-plugins=ServiceAccount',
      '--allow-privileged=true',
      '--profiling=false',
      ...(options.extraArgs ?? []),
    ];
    const tls = { ca: pki.caCert, cert: pki.adminCert, key: pki.adminKey };
    let api: Logged | undefined;
    const startApiServer = async (): Promise<number> => {
      const started = Date.now();
      const proc = spawnLogged(join(assetsDir, 'kube-apiserver'), apiArgs);
      api = proc;
      children.push(proc.child);
      await waitUntil('kube-apiserver', proc, options.readyTimeoutMs ?? 90_000, async () => {
        const res = await httpsCall(url, tls, 'GET', '/readyz', { timeoutMs: 2_000 });
        return res.status === 200;
      });
      return Date.now() - started;
    };
    const apiServerMs = await startApiServer();

    const kubeconfig = renderKubeconfig(url, tls.ca, tls);
    const kubeconfigPath = join(dir, 'kubeconfig');
    writeFileSync(kubeconfigPath, kubeconfig, { mode: 0o600 });

    return {
      url,
      port,
      etcdUrl,
      kubeconfigPath,
      kubeconfig,
      serviceAccountIssuer,
      tls,
      startup: { etcdMs, apiServerMs },
      request: (method, path, opts) => httpsCall(url, tls, method, path, opts),
      kubeconfigForToken(token) {
        const path = join(dir, `kubeconfig-${randomBytes(4).toString('hex')}`);
        writeFileSync(path, renderKubeconfig(url, tls.ca, { token }), { mode: 0o600 });
        return path;
      },
      async stopApiServer() {
        // kube-apiserver drains watches for a long time on SIGTERM; a test restart need not wait.
        if (api !== undefined) await terminate(api.child, 1_000);
      },
      async startApiServer() {
        if (api !== undefined && !hasExited(api.child)) return;
        await startApiServer();
      },
      stop,
      async destroy() {
        await stop();
        rmSync(dir, { recursive: true, force: true });
      },
    };
  } catch (err) {
    await stop();
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }
}

// --- HTTPS ---

function httpsCall(
  baseUrl: string,
  tls: { ca: string; cert: string; key: string },
  method: string,
  path: string,
  options: KubeRequestOptions = {},
): Promise<KubeResponse> {
  const payload = options.body === undefined ? undefined : typeof options.body === 'string' ? options.body : JSON.stringify(options.body);
  // `*/*` too: some endpoints answer 406 to a bare application/json (/openid/v1/jwks is application/jwk-set+json).
  const headers: Record<string, string> = { accept: 'application/json, */*;q=0.5', ...options.headers };
  if (payload !== undefined) {
    headers['content-type'] = options.contentType ?? 'application/json';
    headers['content-length'] = String(Buffer.byteLength(payload));
  }
  const timeoutMs = options.timeoutMs ?? 10_000;
  return new Promise((resolve, reject) => {
    const req = httpsRequest(
      new URL(path, baseUrl),
      {
        method,
        headers,
        ca: tls.ca,
        ...(options.anonymous === true ? {} : { cert: tls.cert, key: tls.key }),
        agent: false,
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('error', reject);
        res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks).toString('utf8') }));
      },
    );
    req.setTimeout(timeoutMs, () => req.destroy(new Error(`${method} ${path}: no answer within ${timeoutMs} ms`)));
    req.on('error', reject);
    req.end(payload);
  });
}

// --- helpers ---

export function nonEmpty(s: string | undefined): string | undefined {
  return s === undefined || s === '' ? undefined : s;
}

export function isExecutable(path: string): boolean {
  try {
    accessSync(path, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}
