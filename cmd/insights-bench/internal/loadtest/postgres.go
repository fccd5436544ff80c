package loadtest

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/FerretDB/FerretDB/ferretdb"
	"github.com/jackc/pgx/v5"

	"github.com/bmsview/insights/internal/devstack"
)

// DefaultPostgresURL is the PostgreSQL of StorePostgres when
// Options.PostgresURL is empty: the machine's own, as ../shared/peers sets
// it up for River.
const DefaultPostgresURL = "postgres://postgres:pg@127.0.0.1:5432/postgres"

// startPostgres runs FerretDB in this process storing its data in the
// PostgreSQL database at url (one schema per MongoDB database). Every commit
// is PostgreSQL's own, durable when acknowledged, so the store gets no Sync,
// Checkpoint or HistoryWindow: prepare is its only hook.
func startPostgres(ctx context.Context, url string, logger *slog.Logger) (f *devstack.FerretDB, prepare func(context.Context, string) error, err error) {
	f, err = devstack.StartFerretDB(ctx, ferretdb.Config{Handler: "postgresql", PostgreSQLURL: url, Logger: logger})
	if err != nil {
		return nil, nil, err
	}
	return f, func(ctx context.Context, database string) error { return preparePostgres(ctx, url, database) }, nil
}

// preparePostgres adds to every collection table of database an index that
// serves the filter FerretDB v1 reads a document by _id with, as
// devstack.Mongo.Prepare does on SQLite: FerretDB filters by
// `_jsonb->$1 @> $2`, which a B-tree index cannot serve; a GIN index on
// `_jsonb->'_id'` serves the plans PostgreSQL makes with the key filled in.
func preparePostgres(ctx context.Context, url, database string) error {
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return fmt.Errorf("loadtest: connect to PostgreSQL: %w", err)
	}
	defer conn.Close(context.Background())
	rows, err := conn.Query(ctx, fmt.Sprintf(`SELECT _jsonb->>'table' FROM %s`, pgx.Identifier{database, "_ferretdb_database_metadata"}.Sanitize()))
	if err != nil {
		return fmt.Errorf("loadtest: list tables of %s: %w", database, err)
	}
	tables, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return fmt.Errorf("loadtest: list tables of %s: %w", database, err)
	}
	for _, t := range tables {
		q := fmt.Sprintf(`CREATE INDEX IF NOT EXISTS %s ON %s USING gin ((_jsonb->'_id'))`,
			pgx.Identifier{t + "_id_lookup"}.Sanitize(), pgx.Identifier{database, t}.Sanitize())
		if _, err := conn.Exec(ctx, q); err != nil {
			return fmt.Errorf("loadtest: index %s.%s: %w", database, t, err)
		}
	}
	return nil
}
