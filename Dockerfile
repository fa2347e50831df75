# syntax=docker/dockerfile:1
#
# Valet gateway image.
#   docker build -t valet .
#   docker run --rm -p 8080:8080 --env-file .env -v valet-data:/data valet
#
# Three stages:
#   build  - all dependencies (no install scripts needed: tsc only reads type definitions), then
#            `npm run build` -> dist/
#   deps   - production dependencies only, with better-sqlite3's native addon built here, where
#            the compiler toolchain lives
#   final  - node + production node_modules + dist/ + the example policies; runs as `node`

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
ENV NODE_ENV=production \
    VALET_HOST=0.0.0.0 \
    VALET_PORT=8080 \
    VALET_DATA=/data \
    VALET_CONFIG=/etc/valet
WORKDIR /app
# package.json is needed at run time: it declares "type": "module" for dist/.
COPY package.json ./
COPY --from=deps /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
# The example configuration; mount your own directory over /etc/valet.
COPY policies /etc/valet
# /data holds the audit database, the secret store, and any generated signing or master key.
# Created here, owned by `node`, so a fresh named volume mounted on it inherits that ownership.
RUN mkdir -p /data && chown node:node /data && chmod 0700 /data
VOLUME ["/data"]
USER node
EXPOSE 8080
# node is PID 1 and handles SIGTERM itself: it drains in-flight requests (gateway.shutdown_grace_ms)
# and flushes the audit log before exiting. Give `docker stop` at least that long.
STOPSIGNAL SIGTERM
CMD ["node", "dist/gateway/cli/main.js", "start"]
