# The rekey worker and admin API. The build steps are the README's: `npm ci`, then `npm run build`.
FROM node:20-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci
COPY . .
RUN npm run build

FROM node:20-bookworm-slim
WORKDIR /app
ENV NODE_ENV=production
COPY package.json package-lock.json ./
RUN npm ci --omit=dev
COPY --from=build /app/dist ./dist
COPY migrations ./migrations
USER node
# Worker by default; the admin API runs the same image with `node dist/src/admin/main.js`.
CMD ["node", "dist/src/worker.js"]
