// Package deploy holds no code: its tests check the deployment files at the
// repository root (docker-compose.yml, Dockerfile, .env.example,
// .gitignore, .dockerignore) and run asynq against real Redis Sentinel and
// Redis Cluster topologies (internal/testenv). The operator guide is
// docs/deploy.md.
package deploy
