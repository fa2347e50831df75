# syntax=docker/dockerfile:1
#
# Valet gateway image (production by default; see README, "Docker").
#   docker build -t valet .
#   docker run --rm -v valet-keys:/keys valet node dist/gateway/cli/main.js keys init --dir /keys
#   docker run --rm -p 127.0.0.1:8080:8080 -p 127.0.0.1:8081:8081 --env-file .env \
#     -v valet-keys:/run/secrets:ro -v valet-data:/data valet
#
# Three stages:
#   build  - all dependencies (no install scripts needed: tsc only reads type definitions), then
#            `npm run build` -> dist/
#   deps   - production dependencies only, with better-sqlite3's native addon built here, where
#            the compiler toolchain lives
#   final  - node + tini + production node_modules + dist/ + the example policies; runs as `node`

ARG NODE_IMAGE=node:20-bookworm-slim

# ---------------------------------------------------------------------------------------------
FROM ${NODE_IMAGE} AS build
WORKDIR /app
COPY package.json package-lock.json ./
# --ignore-scripts: skips the dependencies' install scripts (not needed to compile TypeScript)
# and our own `prepare` script (sources are not copied yet; we build explicitly below).
RUN npm ci --ignore-scripts --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY gateway ./gateway
# The admin dashboard: bundled by esbuild into dist/dashboard (its binary comes from the
# platform package npm installed above; no install script is needed).
COPY dashboard ./dashboard
COPY scripts/build-dashboard.mjs ./scripts/
RUN npm run build

# ---------------------------------------------------------------------------------------------
FROM ${NODE_IMAGE} AS deps
WORKDIR /app
# Toolchain for node-gyp, used only when better-sqlite3 has no prebuilt binary to download for
# this platform. It stays in this stage; the final image copies node_modules only.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 make g++ \
 && rm -rf /var/lib/apt/lists/*
# Compile against the headers shipped in the image instead of downloading them.
ENV npm_config_nodedir=/usr/local
COPY package.json package-lock.json ./
# --omit=dev: no TypeScript, vitest, ... --ignore-scripts: our `prepare` script runs tsc, which
# is a dev dependency and is absent here. Then run the one install script production needs.
RUN npm ci --omit=dev --ignore-scripts --no-audit --no-fund
RUN npm rebuild better-sqlite3 \
 && node -e "const D = require('better-sqlite3'); new D(':memory:').close()"

# ---------------------------------------------------------------------------------------------
FROM ${NODE_IMAGE}
# tini as PID 1: it forwards SIGTERM to node and reaps zombies (the anchor command's children);
# node as PID 1 would get no default signal handlers and reap nothing.
RUN apt-get update \
 && apt-get install -y --no-install-recommends tini \
 && rm -rf /var/lib/apt/lists/*
# Production by default: Valet then refuses generated, published, example and low-entropy keys
# and a master key kept inside /data. Keys come from files outside /data (Docker secrets, or the
# valet-keys volume `valet keys init` fills on first start in docker-compose.yml), never from the
# image or the repository.
# The admin plane listens on 0.0.0.0 inside the container; publish it on the host's loopback only.
ENV NODE_ENV=production \
    VALET_ENV=production \
    VALET_HOST=0.0.0.0 \
    VALET_PORT=8080 \
    VALET_ADMIN_HOST=0.0.0.0 \
    VALET_ADMIN_PORT=8081 \
    VALET_DATA=/data \
    VALET_CONFIG=/etc/valet \
    VALET_MASTER_KEY_FILE=/run/secrets/valet_master_key \
    VALET_DEV_SIGNING_KEY_FILE=/run/secrets/valet_signing_key
WORKDIR /app
# package.json is needed at run time: it declares "type": "module" for dist/.
COPY package.json ./
COPY --from=deps /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
# The upstream presets (data, read at start) and the example configuration; mount your own
# directory over /etc/valet.
COPY presets ./presets
COPY policies /etc/valet
# /data holds the audit database, the secret store and generated per-install keys (approval link
# key); never the master key. /keys is where `valet keys init --dir /keys` writes the master and
# signing keys into a volume of their own. Both are created here, owned by `node`, mode 0700, so a
# fresh named volume mounted on either inherits both; Valet keeps every file in them 0600.
RUN mkdir -p /data /keys && chown node:node /data /keys && chmod 0700 /data /keys
VOLUME ["/data"]
USER node
EXPOSE 8080 8081
# Ready when the admin plane's /readyz answers 200 (audit database writable, policy loaded). The
# slim image has no curl: node's own http client does it.
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
  CMD ["node", "-e", "require('http').get('http://127.0.0.1:8081/readyz', (r) => process.exit(r.statusCode === 200 ? 0 : 1)).on('error', () => process.exit(1))"]
# Valet drains in-flight requests (gateway.shutdown_grace_ms) and flushes the audit log on
# SIGTERM, which tini passes on. Give `docker stop` at least that long. `-s`: also correct when
# Docker's own init (`--init`, Compose `init: true`) is PID 1.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/tini", "-s", "--"]
CMD ["node", "--no-memory-reducer", "--single-threaded-gc", "dist/gateway/cli/main.js", "start"]
