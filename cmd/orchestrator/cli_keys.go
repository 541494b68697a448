package main

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/flotaio/flota/internal/fleet"
	"github.com/flotaio/flota/internal/protocol"
)

// Key pair file names written by keys generate.
const (
	privateKeyFile = "firmware.key"
	publicKeyFile  = "firmware.pub"
)

// keysGenerate writes a new ed25519 key pair: DIR/firmware.key (PKCS #8
// PEM, mode 0600) and DIR/firmware.pub (PKIX PEM). It never overwrites.
func (c *cli) keysGenerate(args []string) error {
	flags, sp := c.newFlags("keys generate")
	out := flags.String("out", ".", "directory for firmware.key and firmware.pub (created 0700 if missing)")
	if _, err := c.parse(flags, sp, args); err != nil {
		return err
	}
	privPath, pubPath := filepath.Join(*out, privateKeyFile), filepath.Join(*out, publicKeyFile)
	for _, p := range []string{privPath, pubPath} {
		if _, err := os.Lstat(p); err == nil {
			return fmt.Errorf("%s exists: refusing to overwrite a key (move it away first)", p)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	if err := os.MkdirAll(*out, 0o700); err != nil {
		return err
	}
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return err
	}
	privPEM, err := protocol.MarshalPrivateKeyPEM(priv)
	if err != nil {
		return err
	}
	pubPEM, err := protocol.MarshalPublicKeyPEM(pub)
	if err != nil {
		return err
	}
	if err := writeNew(privPath, privPEM, 0o600); err != nil {
		return err
	}
	if err := writeNew(pubPath, pubPEM, 0o644); err != nil {
		os.Remove(privPath) //nolint:errcheck // a pair or nothing
		return err
	}
	fmt.Fprintf(c.stdout, "private key %s (keep it offline; sign with: orchestrator firmware add ... --sign-key %s)\n", privPath, privPath)
	fmt.Fprintf(c.stdout, "public key  %s (provision it on devices: devicesim --public-key %s)\n", pubPath, pubPath)
	return nil
}

// writeNew creates path with b, failing if it exists.
func writeNew(path string, b []byte, perm os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close() //nolint:errcheck // already failing
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close() //nolint:errcheck // already failing
		return err
	}
	return f.Close()
}

// signFile hashes f, signs meta's signed fields with the private key in
// keyPath, and leaves f at its start for the upload. It sets meta's Size,
// SHA256 and Signature.
func signFile(f *os.File, keyPath string, meta *fleet.Firmware) error {
	key, err := protocol.ReadPrivateKeyFile(keyPath)
	if err != nil {
		return err
	}
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return fmt.Errorf("hash %s: %w", f.Name(), err)
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return err
	}
	meta.Size, meta.SHA256 = n, hex.EncodeToString(h.Sum(nil))
	meta.Signature, err = protocol.SignFirmware(key, protocol.FirmwareInfoOf(*meta))
	return err
}

// signedColumn is the SIGNED column of firmware list: whether the image
// carries a signature, and whether it allows a downgrade.
func signedColumn(fw fleet.Firmware) string {
	switch {
	case fw.Signature == "":
		return "-"
	case fw.AllowDowngrade:
		return "yes, downgrade"
	}
	return "yes"
}
