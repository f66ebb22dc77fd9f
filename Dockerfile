# One image for `lethe serve`, `lethe operator` and `lethe sidecar`:
#   docker build -t lethe:0.1.0 .
#   docker run --rm lethe:0.1.0 --help
# The Node version is the one CI runs the test suite on (24.22.3, LTS), pinned.
# Build stage: the TypeScript compiler and every dev dependency; none of it reaches the image.
FROM node:24.22.3-bookworm-slim AS build
WORKDIR /src
COPY package.json package-lock.json ./
# --ignore-scripts: `prepare` (npm run build) needs the sources, copied below.
RUN npm ci --no-audit --no-fund --ignore-scripts
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
RUN npm run build

# Runtime stage: production dependencies, the compiled code, the default data map and the proto.
FROM node:24.22.3-bookworm-slim AS runtime
ENV NODE_ENV=production
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --ignore-scripts --no-audit --no-fund && npm cache clean --force
COPY --from=build /src/dist ./dist
COPY bin ./bin
COPY datamaps ./datamaps
COPY proto ./proto
# A numeric non-root user (the chart's runAsUser), so runAsNonRoot can be verified by the kubelet.
USER 65532:65532
# Default port of `lethe serve` when LETHE_LISTEN says 0.0.0.0:50051 (the chart does).
EXPOSE 50051
ENTRYPOINT ["node", "/app/bin/lethe.js"]
CMD ["serve"]
