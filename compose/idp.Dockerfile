# The OpenID provider of the compose cluster: the project's test provider (panva's certified
# oidc-provider with a demo realm: einstein/relativity, marie/radioactivity, newton/gravity, and
# the client gw-test/gw-secret allowed the password grant). For a demo, not for production.
FROM node:20-bookworm-slim
WORKDIR /app/idp
COPY tests/idp/package.json tests/idp/package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund
COPY tests/idp/provider.mjs ./
USER node
ENTRYPOINT ["node", "/app/idp/provider.mjs"]
