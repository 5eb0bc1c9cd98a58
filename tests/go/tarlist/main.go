// Command tarlist prints what Go's archive/tar (the reader containerd and Docker apply
// layers with) makes of a tar stream: the reference for pyimg's imagelayer/tarread.py
// (tests/test_tarread_go.py).
//
// It reads the stream from stdin and prints one JSON line per header Next() returns, after
// copying that member's data with io.Copy (for every type, so header-only types show what
// Go gives for them: nothing):
//
//	{"name", "name_hex", "linkname", "linkname_hex", "typeflag", "size", "mode", "uid",
//	 "gid", "sha256"}
//
// name and linkname are also given in hex because JSON strings cannot carry bytes that are
// not UTF-8. The last line is {"end": true} when Next() returns io.EOF, or {"error": "..."}
// for the first error of Next() or of the copy (the member whose copy failed is not
// printed). With -max-data N, a member with more than N bytes of data stops the listing with
// {"too_large": true} instead of hashing it all (a sparse file's holes cost time, not input).
package main

import (
	"archive/tar"
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"flag"
	"io"
	"os"
)

type member struct {
	Name        string `json:"name"`
	NameHex     string `json:"name_hex"`
	Linkname    string `json:"linkname"`
	LinknameHex string `json:"linkname_hex"`
	Typeflag    string `json:"typeflag"`
	Size        int64  `json:"size"`
	Mode        int64  `json:"mode"`
	UID         int    `json:"uid"`
	GID         int    `json:"gid"`
	Sha256      string `json:"sha256"`
}

func main() {
	maxData := flag.Int64("max-data", 0, "stop at a member with more data bytes (0: no limit)")
	flag.Parse()

	out := bufio.NewWriter(os.Stdout)
	enc := json.NewEncoder(out)
	emit := func(v interface{}) {
		if err := enc.Encode(v); err != nil {
			os.Exit(3)
		}
	}
	defer func() {
		if err := out.Flush(); err != nil {
			os.Exit(3)
		}
	}()

	// A bufio.Reader is no io.Seeker: Go reads the stream as it reads a decompressed layer
	// (a pipe), even when stdin is a regular file.
	tr := tar.NewReader(bufio.NewReader(os.Stdin))
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			emit(map[string]bool{"end": true})
			return
		}
		if err != nil {
			emit(map[string]string{"error": err.Error()})
			return
		}
		h := sha256.New()
		if *maxData > 0 {
			var n int64
			n, err = io.CopyN(h, tr, *maxData+1)
			if err == io.EOF {
				err = nil // the member has fewer bytes than the limit
			}
			if err == nil && n > *maxData {
				emit(map[string]bool{"too_large": true})
				return
			}
		} else {
			_, err = io.Copy(h, tr)
		}
		if err != nil {
			emit(map[string]string{"error": err.Error()})
			return
		}
		emit(member{
			Name:        hdr.Name,
			NameHex:     hex.EncodeToString([]byte(hdr.Name)),
			Linkname:    hdr.Linkname,
			LinknameHex: hex.EncodeToString([]byte(hdr.Linkname)),
			Typeflag:    string(rune(hdr.Typeflag)),
			Size:        hdr.Size,
			Mode:        hdr.Mode,
			UID:         hdr.Uid,
			GID:         hdr.Gid,
			Sha256:      hex.EncodeToString(h.Sum(nil)),
		})
	}
}
