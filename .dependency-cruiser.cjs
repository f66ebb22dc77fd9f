/**
 * The layers of src/ and what may import what (README, "Working on Lethe", explains them). Checked in
 * `npm test` through `npm run lint`.
 *
 *   fronts        cli · server · http · operator · sidecar     (composition and protocols)
 *   shared fronts api · client · metrics · tls                  (used by several fronts)
 *   adapters      kube                                          (clients of outside systems the domain may use)
 *   domain        privacy · events · auth                       (the engine and its events)
 *   store         store                                         (SQL, migrations, repositories)
 *   foundation    errors.ts · runtime · gen                      (no Lethe imports above them)
 *   config        config                                        (read once at start-up; may name domain defaults)
 */
const FRONTS = '^src/(cli|server|http|operator|sidecar)/';
const DOMAIN = '^src/(privacy|events|auth)/';
const STORE = '^src/store/';
const FOUNDATION = '^src/(errors\\.ts|runtime/|gen/)';

module.exports = {
  forbidden: [
    { name: 'no-circular', severity: 'error', comment: 'Import cycles make modules impossible to read or test alone.', from: {}, to: { circular: true } },
    {
      name: 'fronts-are-independent',
      severity: 'error',
      comment: 'A front (cli, server, http, operator, sidecar) never imports another: what two fronts share lives below them. The CLI is the entry point and may start any of them.',
      // lethe-server.ts composes `lethe serve`: it starts the HTTP front beside the gRPC one.
      from: { path: '^src/(server|http|operator|sidecar)/', pathNot: '^src/server/lethe-server\\.ts$' },
      to: { path: FRONTS, pathNot: '^src/$1/' },
    },
    {
      name: 'domain-imports-no-front',
      severity: 'error',
      comment: 'The engine and its events know nothing of gRPC, HTTP, Kubernetes or the CLI.',
      from: { path: `${DOMAIN}|${STORE}` },
      to: { path: `${FRONTS}|^src/(api|client|metrics|tls)/` },
    },
    {
      name: 'store-imports-no-domain',
      severity: 'error',
      comment: 'The store keeps rows; the rules about them (due dates, forget plans) live in the domain.',
      from: { path: STORE },
      to: { path: DOMAIN },
    },
    {
      name: 'foundation-imports-nothing-above',
      severity: 'error',
      comment: 'Errors, the runtime helpers, configuration and generated code are the ground floor.',
      from: { path: FOUNDATION },
      to: { path: '^src/', pathNot: FOUNDATION },
    },
    {
      name: 'no-tests-in-src',
      severity: 'error',
      from: { path: '^src/' },
      to: { path: '^(test|bench)/' },
    },
  ],
  options: {
    doNotFollow: { path: 'node_modules' },
    tsConfig: { fileName: 'tsconfig.json' },
    tsPreCompilationDeps: true,
    enhancedResolveOptions: { exportsFields: ['exports'], conditionNames: ['import', 'require', 'node', 'default'], extensions: ['.ts', '.js'] },
  },
};
