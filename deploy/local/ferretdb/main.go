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
	// A second listener speaking TLS only (FerretDB's own flag names). No CA file: giving
	// one would make FerretDB require client certificates.
	tlsAddr := flag.String("listen-tls", "", "TLS listen address (empty: no TLS listener)")
	tlsCert := flag.String("listen-tls-cert-file", "", "TLS server certificate (PEM, chain after it)")
	tlsKey := flag.String("listen-tls-key-file", "", "TLS server private key (PEM)")
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
		Listener: ferretdb.ListenerConfig{
			TCP:         *addr,
			TLS:         *tlsAddr,
			TLSCertFile: *tlsCert,
			TLSKeyFile:  *tlsKey,
		},
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
	log.Printf("FerretDB v1.24.2 (sqlite handler, %s) listening on %s, TLS on %q", abs, *addr, *tlsAddr) // MongoDBURI() before Run would deadlock
	if err := f.Run(ctx); err != nil {
		log.Fatal(err)
	}
}
