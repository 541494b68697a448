package agent_test

import (
	"context"
	"log"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"

	"github.com/flotaio/flota/agent"
)

// fileDevice stores the image in one file and installs it with a command:
// the smallest agent.Device of a Linux program.
type fileDevice struct {
	path    string
	img     *os.File
	version string
}

func (d *fileDevice) WriteImage(update string, off int64, p []byte) error {
	if d.img == nil {
		f, err := os.OpenFile(d.path, os.O_RDWR|os.O_CREATE, 0o600)
		if err != nil {
			return err
		}
		d.img = f
	}
	if err := d.img.Truncate(off); err != nil {
		return err
	}
	_, err := d.img.WriteAt(p, off)
	return err
}

func (d *fileDevice) SyncImage() error {
	if d.img == nil {
		return nil
	}
	return d.img.Sync()
}

func (d *fileDevice) Install(ctx context.Context, update string, fw agent.Firmware) error {
	return exec.CommandContext(ctx, "/usr/bin/my-installer", d.path).Run()
}

// Reboot: the application runs the new version at once.
func (d *fileDevice) Reboot(ctx context.Context) error { return agent.ErrNoReboot }

// Booted trusts the install: a real device checks what runs.
func (d *fileDevice) Booted(ctx context.Context, target string) string {
	d.version = target
	return target
}

func (d *fileDevice) Discard(update string) {
	if d.img != nil {
		d.img.Close()
		d.img = nil
	}
	os.Remove(d.path)
}

// Example embeds an agent in a device's own Go program: it connects to
// the orchestrator's broker, takes signed updates of its model, writes
// them through its Device and resumes a download after a restart from its
// state file.
func Example() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	pub, err := os.ReadFile("/etc/flota/firmware.pub.raw") // the 32 raw bytes of the ed25519 key
	if err != nil {
		log.Fatal(err)
	}
	a := agent.New(agent.Config{
		Broker:    "ssl://flota.example.com:8883",
		ID:        "gw-00042",
		Model:     "gateway-v2",
		Version:   "1.4.2",
		Password:  os.Getenv("FLOTA_SECRET"),
		PublicKey: pub,
		StateFile: "/var/lib/my-app/flota-state.json",
		Device:    &fileDevice{path: "/var/lib/my-app/update.img"},
		Logger:    slog.Default(),
	})
	if err := a.Start(ctx); err != nil {
		log.Print(err) // it keeps trying in the background
	}
	<-ctx.Done()
	a.Close()
}
