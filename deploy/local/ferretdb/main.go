// Tiny launcher for FerretDB v1 (MongoDB wire protocol on top of SQLite), built from the
// Go module proxy through FerretDB's public embeddable package by deploy/local/services.
//
// Why not `go install github.com/FerretDB/FerretDB/cmd/ferretdb@v1.24.2`: that binary
// panics at start (missing build/version/version.txt, upstream issue 2982); the embeddable
// package does not need it. Versions are pinned by go.mod + go.sum beside this file.
package main

import (
	"context"
	"flag"
	"log"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/FerretDB/FerretDB/ferretdb"
)

func main() {
	addr := flag.String("listen-addr", "127.0.0.1:27017", "TCP listen address")
	dir := flag.String("sqlite-dir", "", "SQLite data directory (created if missing)")
	memory := flag.Bool("sqlite-memory", false, "keep SQLite databases in memory (sqlite-dir still must exist)")
	flag.Parse()

	d := *dir
	if d == "" {
		d = filepath.Join(os.TempDir(), "ferretdb-sqlite")
	}
	abs, err := filepath.Abs(d)
	if err != nil {
		log.Fatal(err)
	}
	if err := os.MkdirAll(abs, 0o755); err != nil {
		log.Fatal(err)
	}
	cfg := &ferretdb.Config{
		Listener:  ferretdb.ListenerConfig{TCP: *addr},
		Handler:   "sqlite",
		SQLiteURL: "file:" + abs + "/",
	}
	if *memory {
		cfg.SQLiteURL += "?mode=memory"
	}

	// New binds the listener, so a taken port fails here with a clear error.
	f, err := ferretdb.New(cfg)
	if err != nil {
		log.Fatal(err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	log.Printf("FerretDB v1.24.2 (sqlite handler, %s) listening on %s", abs, *addr) // MongoDBURI() before Run would deadlock
	if err := f.Run(ctx); err != nil {
		log.Fatal(err)
	}
}
