// SPDX-License-Identifier: MIT
// SPDX-FileCopyrightText: 2023 mochi-mqtt, mochi-co
// SPDX-FileContributor: mochi-co

package mqtt

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/xid"

	"github.com/mochi-mqtt/server/v2/packets"
)

const (
	defaultKeepalive             uint16 = 10 // the default connection keepalive value in seconds.
	defaultClientProtocolVersion byte   = 4  // the default mqtt protocol version of connecting clients (if somehow unspecified).
	minimumKeepalive             uint16 = 5  // the minimum recommended keepalive - values under with display a warning.
)

var (
	ErrMinimumKeepalive = errors.New("client keepalive is below minimum recommended value and may exhibit connection instability")
)

// ReadFn is the function signature for the function used for reading and processing new packets.
type ReadFn func(*Client, packets.Packet) error

// Clients contains a map of the clients known by the broker.
type Clients struct {
	internal map[string]*Client // clients known by the broker, keyed on client id.
	sync.RWMutex
}

// NewClients returns an instance of Clients.
func NewClients() *Clients {
	return &Clients{
		internal: make(map[string]*Client),
	}
}

// Add adds a new client to the clients map, keyed on client id.
func (cl *Clients) Add(val *Client) {
	cl.Lock()
	defer cl.Unlock()
	cl.internal[val.ID] = val
}

// GetAll returns all the clients.
func (cl *Clients) GetAll() map[string]*Client {
	cl.RLock()
	defer cl.RUnlock()
	m := map[string]*Client{}
	for k, v := range cl.internal {
		m[k] = v
	}
	return m
}

// forEach calls fn for each client under the read lock, without copying
// the map as GetAll does: the event loop's expiry passes visit every
// client each second (flota patch). fn must not call a method of cl, nor
// anything that may (a hook, DisconnectClient): a second read lock waits
// behind a writer waiting for the first, and an Add or Delete waits for
// fn. The callers collect the few clients that need something done and do
// it once forEach has returned.
func (cl *Clients) forEach(fn func(client *Client)) {
	cl.RLock()
	defer cl.RUnlock()
	for _, client := range cl.internal {
		fn(client)
	}
}

// deleteIf removes client if the map still holds it under its id, not a
// client that has taken the id over since (flota patch).
func (cl *Clients) deleteIf(client *Client) {
	cl.Lock()
	defer cl.Unlock()
	if cl.internal[client.ID] == client {
		delete(cl.internal, client.ID)
	}
}

// Get returns the value of a client if it exists.
func (cl *Clients) Get(id string) (*Client, bool) {
	cl.RLock()
	defer cl.RUnlock()
	val, ok := cl.internal[id]
	return val, ok
}

// Len returns the length of the clients map.
func (cl *Clients) Len() int {
	cl.RLock()
	defer cl.RUnlock()
	val := len(cl.internal)
	return val
}

// Delete removes a client from the internal map.
func (cl *Clients) Delete(id string) {
	cl.Lock()
	defer cl.Unlock()
	delete(cl.internal, id)
}

// GetByListener returns clients matching a listener id.
func (cl *Clients) GetByListener(id string) []*Client {
	cl.RLock()
	defer cl.RUnlock()
	// len, not cl.Len(): Len read-locks again, which deadlocks with a writer
	// waiting in between, as Server.Close met a disconnecting client (flota
	// patch).
	clients := make([]*Client, 0, len(cl.internal))
	for _, client := range cl.internal {
		if client.Net.Listener == id && !client.Closed() {
			clients = append(clients, client)
		}
	}
	return clients
}

// Client contains information about a client known by the broker.
type Client struct {
	Properties   ClientProperties // client properties
	State        ClientState      // the operational state of the client.
	Net          ClientConnection // network connection state of the client
	ID           string           // the client id.
	ops          *ops             // ops provides a reference to server ops.
	sync.RWMutex                  // mutex
}

// ClientConnection contains the connection transport and metadata for the client.
type ClientConnection struct {
	Conn     net.Conn      // the net.Conn used to establish the connection
	bconn    *bufio.Reader // a buffered net.Conn for reading packets
	outbuf   *bytes.Buffer // a buffer for writing packets
	Remote   string        // the remote address of the client
	Listener string        // listener id of the client
	Inline   bool          // if true, the client is the built-in 'inline' embedded client
}

// ClientProperties contains the properties which define the client behaviour.
type ClientProperties struct {
	Props           packets.Properties
	Will            Will
	Username        []byte
	ProtocolVersion byte
	Clean           bool
}

// Will contains the last will and testament details for a client connection.
type Will struct {
	Payload           []byte                 // -
	User              []packets.UserProperty // -
	TopicName         string                 // -
	Flag              uint32                 // 0,1
	WillDelayInterval uint32                 // -
	Qos               byte                   // -
	Retain            bool                   // -
}

// ClientState tracks the state of the client.
type ClientState struct {
	TopicAliases    TopicAliases         // a map of topic aliases
	stopCause       atomic.Value         // reason for stopping
	Inflight        *Inflight            // a map of in-flight qos messages
	Subscriptions   *Subscriptions       // a map of the subscription filters a client maintains
	disconnected    int64                // the time the client disconnected in unix time, for calculating expiry
	outbound        chan *packets.Packet // queue for pending outbound packets
	endOnce         sync.Once            // only end once
	isTakenOver     atomic.Bool          // used to identify orphaned clients
	packetID        uint32               // the current highest packetID
	open            context.Context      // indicate that the client is open for packet exchange
	cancelOpen      context.CancelFunc   // cancel function for open context
	outboundQty     int32                // number of messages currently in the outbound queue
	writing         atomic.Bool          // a goroutine is writing the outbound queue (flota patch)
	Keepalive       uint16               // the number of seconds the connection can wait
	ServerKeepalive bool                 // keepalive was set by the server
	// QueueFullWait is how long, at most, a QoS 1 or 2 delivery to this
	// client waits for room in its outbound queue or under
	// MaximumInflight instead of being dropped at once; 0 (the default)
	// drops at once. It is set by a hook before the session is
	// established (flota patch: a monitor that subscribed at QoS 1 keeps
	// every event of a burst). See waitRoom for the budget that bounds
	// how long one client can hold its publishers overall.
	QueueFullWait time.Duration
	idMu          sync.Mutex // guards the choice of packetID (flota patch)
	waitMu        sync.Mutex // guards waitDebt and waitAt (flota patch)
	waitDebt      time.Duration
	waitAt        time.Time
}

// waitRoom calls ok, within the client's budget, until it reports room
// (or takes it: a send that succeeded) or the client closes (flota patch). The budget is a leaky bucket of
// QueueFullWait that drains at a tenth of the time elapsed: a client that
// reads slowly can hold its publishers for QueueFullWait at once and for
// a tenth of the time after that, never longer. It reports whether there
// is room.
func (cl *Client) waitRoom(ok func() bool) bool {
	if cl.State.QueueFullWait <= 0 {
		return false
	}
	cl.State.waitMu.Lock()
	now := time.Now()
	cl.State.waitDebt = max(0, cl.State.waitDebt-now.Sub(cl.State.waitAt)/10)
	cl.State.waitAt = now
	budget := cl.State.QueueFullWait - cl.State.waitDebt
	cl.State.waitMu.Unlock()

	deadline := now.Add(budget)
	room := ok()
	for !room && !cl.Closed() && time.Now().Before(deadline) {
		time.Sleep(200 * time.Microsecond)
		room = ok()
	}
	cl.State.waitMu.Lock()
	cl.State.waitDebt += time.Since(now)
	cl.State.waitMu.Unlock()
	return room
}

// newClient returns a new instance of Client. This is almost exclusively used by Server
// for creating new clients, but it lives here because it's not dependent.
func newClient(c net.Conn, o *ops) *Client {
	ctx, cancel := context.WithCancel(context.Background())
	cl := &Client{
		State: ClientState{
			Inflight:      NewInflights(),
			Subscriptions: NewSubscriptions(),
			TopicAliases:  NewTopicAliases(o.options.Capabilities.TopicAliasMaximum),
			open:          ctx,
			cancelOpen:    cancel,
			Keepalive:     defaultKeepalive,
			outbound:      make(chan *packets.Packet, o.options.Capabilities.MaximumClientWritesPending),
		},
		Properties: ClientProperties{
			ProtocolVersion: defaultClientProtocolVersion, // default protocol version
		},
		ops: o,
	}

	if c != nil {
		cl.Net = ClientConnection{
			Conn:   c,
			bconn:  bufio.NewReaderSize(c, o.options.ClientNetReadBufferSize),
			Remote: c.RemoteAddr().String(),
		}
	}

	return cl
}

// WriteLoop ranges over pending outbound messages and writes them to the
// client connection until the client closes. The server does not run it: a
// writer runs only while the queue holds packets (startWriter), so that an
// idle connection costs one goroutine, not two (flota patch).
func (cl *Client) WriteLoop() {
	cl.State.writing.Store(true)
	for {
		select {
		case pk := <-cl.State.outbound:
			cl.writeQueued(pk)
		case <-cl.State.open.Done():
			return
		}
	}
}

// startWriter starts a goroutine writing the outbound queue unless one runs.
// Callers put a packet on the queue first.
func (cl *Client) startWriter() {
	if cl.State.writing.CompareAndSwap(false, true) {
		go cl.drainOutbound()
	}
}

// drainOutbound writes queued packets until the queue is empty. At most one
// runs per client: whoever sets writing owns the queue, and the writer
// clears it only when it found the queue empty, checking again afterwards
// for a packet queued in between, whose startWriter saw writing still set.
func (cl *Client) drainOutbound() {
	batched := writesVectored(cl.Net.Conn)
	for {
		select {
		case pk := <-cl.State.outbound:
			if batched {
				cl.writeQueuedBatch(pk)
			} else {
				cl.writeQueued(pk)
			}
			continue
		default:
		}
		// A packet written directly while packets were queued went into
		// outbuf, for the queue's last write to flush; if that write failed
		// before reaching the connection (larger than the client's maximum
		// packet size), nothing else would.
		cl.Lock()
		_ = cl.flushOutbuf() // a write error ends the connection, as WritePacket reports
		cl.Unlock()
		cl.State.writing.Store(false)
		// The check is an atomic load of the count publishToClient raises
		// after queuing and before startWriter, not len(outbound): len is a
		// plain load, which a weakly ordered processor (arm64) may perform
		// before the store above is seen, while a publisher's startWriter
		// still sees writing set; the packet would wait for the next one.
		if atomic.LoadInt32(&cl.State.outboundQty) <= 0 || !cl.State.writing.CompareAndSwap(false, true) {
			return
		}
	}
}

// writeQueued writes a packet taken from the outbound queue, and returns
// its payload buffer and the packet itself to their pools if they came from
// there (flota patch).
func (cl *Client) writeQueued(pk *packets.Packet) {
	cl.queuedDone(pk, cl.WritePacket(*pk))
}

// A writer takes at most maxBatchPackets queued packets at a time, and no
// more once they hold maxBatchBytes encoded, to write them with one system
// call (flota patch). With outbuf ahead of them that is 16 iovecs, an
// array of 256 bytes that the runtime keeps for each connection's next
// writev. The byte bound is small because the client's lock is held for
// the whole write, which every other write to the client (a PUBACK from
// its read goroutine) and NextPacketID wait for, and the encoded copies of
// the batch are live until it is written: on a slow link 64 KiB is four
// 16 KiB chunks, as many as one device ack lets the engine send.
const (
	maxBatchPackets = 15
	maxBatchBytes   = 64 << 10
)

// writeBatch holds the queued packets a writer encodes and writes at once,
// with their encode buffers (flota patch).
type writeBatch struct {
	pks  [maxBatchPackets]*packets.Packet
	bufs [maxBatchPackets]*bytes.Buffer
	vec  [maxBatchPackets + 1][]byte // the iovecs: outbuf, then the packets
	bv   net.Buffers                 // vec's slice, kept here so that WriteTo's pointer to it allocates nothing
	n    int
	size int
}

var writeBatches = sync.Pool{New: func() any { return new(writeBatch) }}

// writesVectored reports whether c writes a net.Buffers with one writev,
// not with a Write per buffer (a tls.Conn, a net.Pipe), where the writer
// keeps writing packet by packet (flota patch).
func writesVectored(c net.Conn) bool {
	switch c.(type) {
	case *net.TCPConn, *net.UnixConn:
		return true
	}
	return false
}

// writeQueuedBatch writes first and the packets queued behind it, up to
// maxBatchPackets or maxBatchBytes, with what outbuf holds ahead of them,
// in one vectored write instead of a write per packet. Each packet is
// prepared, checked, counted and passed to OnPacketSent as WritePacket
// does; a packet that fails is logged and dropped as writeQueued does. The
// encode buffers, payloads and packets go back to their pools once written
// (flota patch).
func (cl *Client) writeQueuedBatch(first *packets.Packet) {
	wb := writeBatches.Get().(*writeBatch)
	for pk := first; pk != nil; pk = cl.nextQueued(wb) {
		cl.addToBatch(wb, pk)
	}

	var n int64
	var err error
	if wb.n > 0 {
		n, err = cl.writeBatched(wb)
	}
	for i := 0; i < wb.n; i++ {
		pk, buf := wb.pks[i], wb.bufs[i]
		if err == nil || n >= int64(buf.Len()) {
			n -= int64(buf.Len())
			cl.packetSent(pk, int64(buf.Len()), buf.Bytes())
			cl.queuedDone(pk, nil)
		} else {
			n = 0
			cl.queuedDone(pk, err)
		}
		encodeBuffers.Put(buf)
		wb.pks[i], wb.bufs[i] = nil, nil
	}
	wb.n, wb.size = 0, 0
	writeBatches.Put(wb)
}

// nextQueued takes the next queued packet if the batch has room and one is
// waiting, or returns nil.
func (cl *Client) nextQueued(wb *writeBatch) *packets.Packet {
	if wb.n >= maxBatchPackets || wb.size >= maxBatchBytes {
		return nil
	}
	select {
	case pk := <-cl.State.outbound:
		return pk
	default:
		return nil
	}
}

// addToBatch encodes pk into the batch, or drops it as writeQueued does if
// it cannot be written.
func (cl *Client) addToBatch(wb *writeBatch, pk *packets.Packet) {
	if !pk.Mods.PooledPacket {
		// Not the publisher's pooled copy, which is the writer's to change:
		// WritePacket changes a copy of it.
		pk = queuedCopy(pk)
	}
	if cl.Closed() {
		cl.queuedDone(pk, ErrConnectionClosed)
		return
	}
	buf := encodeBuffers.Get()
	if err := cl.encodePacket(pk, buf); err != nil {
		encodeBuffers.Put(buf)
		cl.queuedDone(pk, err)
		return
	}
	wb.pks[wb.n], wb.bufs[wb.n] = pk, buf
	wb.n++
	wb.size += buf.Len()
}

// writeBatched writes outbuf and the batch's packets with one vectored
// write, under the client's lock as every write, and returns the bytes of
// the packets written.
func (cl *Client) writeBatched(wb *writeBatch) (int64, error) {
	cl.Lock()
	defer cl.Unlock()
	buffered := 0
	wb.bv = wb.vec[:0]
	if cl.Net.outbuf != nil && cl.Net.outbuf.Len() > 0 {
		buffered = cl.Net.outbuf.Len()
		wb.bv = append(wb.bv, cl.Net.outbuf.Bytes())
	}
	for i := 0; i < wb.n; i++ {
		wb.bv = append(wb.bv, wb.bufs[i].Bytes())
	}
	n, err := wb.bv.WriteTo(cl.Net.Conn)
	for i := range wb.bv {
		wb.bv[i] = nil // what a failed write left
	}
	wb.bv = nil
	if buffered > 0 {
		written := int(min(n, int64(buffered)))
		if written == buffered {
			cl.Net.outbuf = nil
		} else {
			cl.Net.outbuf.Next(written) // kept for the next write, as flushOutbuf keeps it
		}
		n -= int64(written)
	}
	return n, err
}

// queuedDone logs a queued packet that could not be written and returns
// its payload buffer and the packet to their pools.
func (cl *Client) queuedDone(pk *packets.Packet, err error) {
	if err != nil {
		// The packet is logged by value: pk goes back to its pool.
		cl.ops.log.Debug("failed publishing packet", "error", err, "client", cl.ID, "packet", packets.PacketNames[pk.FixedHeader.Type]) // flota patch: no payload
	}
	putPayload(pk.Mods.PooledPayload)
	putQueued(pk)
	atomic.AddInt32(&cl.State.outboundQty, -1)
}

// ParseConnect parses the connect parameters and properties for a client.
func (cl *Client) ParseConnect(lid string, pk packets.Packet) {
	cl.Net.Listener = lid

	cl.Properties.ProtocolVersion = pk.ProtocolVersion
	cl.Properties.Username = pk.Connect.Username
	cl.Properties.Clean = pk.Connect.Clean
	cl.Properties.Props = pk.Properties.Copy(false)

	if cl.Properties.Props.ReceiveMaximum > cl.ops.options.Capabilities.MaximumInflight { // 3.3.4 Non-normative
		cl.Properties.Props.ReceiveMaximum = cl.ops.options.Capabilities.MaximumInflight
	}

	if pk.Connect.Keepalive <= minimumKeepalive {
		cl.ops.log.Warn(
			ErrMinimumKeepalive.Error(),
			"client", cl.ID,
			"keepalive", pk.Connect.Keepalive,
			"recommended", minimumKeepalive,
		)
	}

	cl.State.Keepalive = pk.Connect.Keepalive                                              // [MQTT-3.2.2-22]
	cl.State.Inflight.ResetReceiveQuota(int32(cl.ops.options.Capabilities.ReceiveMaximum)) // server receive max per client
	cl.State.Inflight.ResetSendQuota(int32(cl.Properties.Props.ReceiveMaximum))            // client receive max
	cl.State.TopicAliases.Outbound = NewOutboundTopicAliases(cl.Properties.Props.TopicAliasMaximum)

	cl.ID = pk.Connect.ClientIdentifier
	if cl.ID == "" {
		cl.ID = xid.New().String() // [MQTT-3.1.3-6] [MQTT-3.1.3-7]
		cl.Properties.Props.AssignedClientID = cl.ID
	}

	if pk.Connect.WillFlag {
		cl.Properties.Will = Will{
			Qos:               pk.Connect.WillQos,
			Retain:            pk.Connect.WillRetain,
			Payload:           pk.Connect.WillPayload,
			TopicName:         pk.Connect.WillTopic,
			WillDelayInterval: pk.Connect.WillProperties.WillDelayInterval,
			User:              pk.Connect.WillProperties.User,
		}
		if pk.Properties.SessionExpiryIntervalFlag &&
			pk.Properties.SessionExpiryInterval < pk.Connect.WillProperties.WillDelayInterval {
			cl.Properties.Will.WillDelayInterval = pk.Properties.SessionExpiryInterval
		}
		if pk.Connect.WillFlag {
			cl.Properties.Will.Flag = 1 // atomic for checking
		}
	}
}

// refreshDeadline refreshes the read/write deadline for the net.Conn connection.
func (cl *Client) refreshDeadline(keepalive uint16) {
	var expiry time.Time // nil time can be used to disable deadline if keepalive = 0
	if keepalive > 0 {
		expiry = time.Now().Add(time.Duration(keepalive+(keepalive/2)) * time.Second) // [MQTT-3.1.2-22]
	}

	if cl.Net.Conn != nil {
		_ = cl.Net.Conn.SetDeadline(expiry) // [MQTT-3.1.2-22]
	}
}

// NextPacketID returns the next available (unused) packet id for the client.
// If no unused packet ids are available, an error is returned and the client
// should be disconnected.
//
// It takes a lock of its own, not the client's write lock, which a write
// blocked on a client that stopped reading holds: a QoS 1 publish to such
// a client waited for the connection to time out (flota patch).
func (cl *Client) NextPacketID() (i uint32, err error) {
	cl.State.idMu.Lock()
	defer cl.State.idMu.Unlock()

	i = atomic.LoadUint32(&cl.State.packetID)
	started := i
	overflowed := false
	for {
		if overflowed && i == started {
			return 0, packets.ErrQuotaExceeded
		}

		if i >= cl.ops.options.Capabilities.maximumPacketID {
			overflowed = true
			i = 0
			continue
		}

		i++

		if _, ok := cl.State.Inflight.Get(uint16(i)); !ok {
			atomic.StoreUint32(&cl.State.packetID, i)
			return i, nil
		}
	}
}

// ResendInflightMessages attempts to resend any pending inflight messages to connected clients.
func (cl *Client) ResendInflightMessages(force bool) error {
	if cl.State.Inflight.Len() == 0 {
		return nil
	}

	for _, tk := range cl.State.Inflight.GetAll(false) {
		if tk.FixedHeader.Type == packets.Publish {
			tk.FixedHeader.Dup = true // [MQTT-3.3.1-1] [MQTT-3.3.1-3]
		}

		cl.ops.hooks.OnQosPublish(cl, tk, tk.Created, 0)
		err := cl.WritePacket(tk)
		if err != nil {
			return err
		}

		if tk.FixedHeader.Type == packets.Puback || tk.FixedHeader.Type == packets.Pubcomp {
			if ok := cl.State.Inflight.Delete(tk.PacketID); ok {
				cl.ops.hooks.OnQosComplete(cl, tk)
				atomic.AddInt64(&cl.ops.info.Inflight, -1)
			}
		}
	}

	return nil
}

// ClearInflights deletes all inflight messages for the client, e.g. for a disconnected user with a clean session.
func (cl *Client) ClearInflights() {
	for _, tk := range cl.State.Inflight.GetAll(false) {
		if ok := cl.State.Inflight.Delete(tk.PacketID); ok {
			cl.ops.hooks.OnQosDropped(cl, tk)
			atomic.AddInt64(&cl.ops.info.Inflight, -1)
		}
	}
}

// ClearExpiredInflights deletes any inflight messages which have expired.
func (cl *Client) ClearExpiredInflights(now, maximumExpiry int64) []uint16 {
	deleted := []uint16{}
	for _, tk := range cl.State.Inflight.GetAll(false) {
		if inflightExpired(&tk, now, maximumExpiry) {
			if ok := cl.State.Inflight.Delete(tk.PacketID); ok {
				cl.ops.hooks.OnQosDropped(cl, tk)
				atomic.AddInt64(&cl.ops.info.Inflight, -1)
				deleted = append(deleted, tk.PacketID)
			}
		}
	}

	return deleted
}

// inflightExpired reports whether the inflight message pk has expired at
// now, in unix seconds (a function of its own so that Inflight.hasExpired
// asks the same: flota patch).
func inflightExpired(pk *packets.Packet, now, maximumExpiry int64) bool {
	expired := pk.ProtocolVersion == 5 && pk.Expiry > 0 && pk.Expiry < now // [MQTT-3.3.2-5]

	// If the maximum message expiry interval is set (greater than 0), and the message
	// retention period exceeds the maximum expiry, the message will be forcibly removed.
	enforced := maximumExpiry > 0 && now-pk.Created > maximumExpiry

	return expired || enforced
}

// Read reads incoming packets from the connected client and transforms them into
// packets to be handled by the packetHandler.
func (cl *Client) Read(packetHandler ReadFn) error {
	var err error

	for {
		if cl.Closed() {
			return nil
		}

		cl.refreshDeadline(cl.State.Keepalive)
		fh := new(packets.FixedHeader)
		err = cl.ReadFixedHeader(fh)
		if err != nil {
			return err
		}

		err = cl.readAndHandle(fh, packetHandler)
		if err != nil {
			return err
		}
	}
}

// readAndHandle reads the packet whose fixed header was read and passes it
// to packetHandler. It is a function of its own so that the packet, a large
// struct, is not in Read's frame: Read waits for the next header with a
// small stack above it, which the runtime can then shrink (flota patch).
//
//go:noinline
func (cl *Client) readAndHandle(fh *packets.FixedHeader, packetHandler ReadFn) error {
	pk, err := cl.ReadPacket(fh)
	if err != nil {
		return err
	}
	return packetHandler(cl, pk) // Process inbound packet.
}

// Stop instructs the client to shut down all processing goroutines and disconnect.
func (cl *Client) Stop(err error) {
	cl.State.endOnce.Do(func() {

		if cl.Net.Conn != nil {
			_ = cl.Net.Conn.Close() // omit close error
		}

		if err != nil {
			cl.State.stopCause.Store(err)
		}

		if cl.State.cancelOpen != nil {
			cl.State.cancelOpen()
		}

		atomic.StoreInt64(&cl.State.disconnected, time.Now().Unix())
	})
}

// StopCause returns the reason the client connection was stopped, if any.
func (cl *Client) StopCause() error {
	if cl.State.stopCause.Load() == nil {
		return nil
	}
	return cl.State.stopCause.Load().(error)
}

// StopTime returns the the time the client disconnected in unix time, else zero.
func (cl *Client) StopTime() int64 {
	return atomic.LoadInt64(&cl.State.disconnected)
}

// Closed returns true if client connection is closed.
func (cl *Client) Closed() bool {
	return cl.State.open == nil || cl.State.open.Err() != nil
}

func (cl *Client) IsTakenOver() bool {
	return cl.State.isTakenOver.Load()
}

// ReadFixedHeader reads in the values of the next packet's fixed header.
func (cl *Client) ReadFixedHeader(fh *packets.FixedHeader) error {
	if cl.Net.bconn == nil {
		return ErrConnectionClosed
	}

	b, err := cl.Net.bconn.ReadByte()
	if err != nil {
		return err
	}

	err = fh.Decode(b)
	if err != nil {
		return err
	}

	var bu int
	fh.Remaining, bu, err = packets.DecodeLength(cl.Net.bconn)
	if err != nil {
		return err
	}

	if cl.ops.options.Capabilities.MaximumPacketSize > 0 && uint32(fh.Remaining+1) > cl.ops.options.Capabilities.MaximumPacketSize {
		return packets.ErrPacketTooLarge // [MQTT-3.2.2-15]
	}

	atomic.AddInt64(&cl.ops.info.BytesReceived, int64(bu+1))
	return nil
}

// ReadPacket reads the remaining buffer into an MQTT packet.
func (cl *Client) ReadPacket(fh *packets.FixedHeader) (pk packets.Packet, err error) {
	return cl.readPacket(fh, false)
}

// readPacket is ReadPacket; with grow, the body is read into a buffer
// that grows as the bytes arrive (readGrowing) instead of one of the
// announced size made up front (flota patch).
func (cl *Client) readPacket(fh *packets.FixedHeader, grow bool) (pk packets.Packet, err error) {
	atomic.AddInt64(&cl.ops.info.PacketsReceived, 1)

	pk.ProtocolVersion = cl.Properties.ProtocolVersion // inherit client protocol version for decoding
	pk.FixedHeader = *fh
	var p []byte
	if grow {
		p, err = readGrowing(cl.Net.bconn, pk.FixedHeader.Remaining)
	} else {
		p = make([]byte, pk.FixedHeader.Remaining)
		_, err = io.ReadFull(cl.Net.bconn, p)
	}
	if err != nil {
		return pk, err
	}
	n := len(p)

	atomic.AddInt64(&cl.ops.info.BytesReceived, int64(n))

	// Decode the remaining packet values using a fresh copy of the bytes,
	// otherwise the next packet will change the data of this one.
	px := append([]byte{}, p[:]...)
	switch pk.FixedHeader.Type {
	case packets.Connect:
		err = pk.ConnectDecode(px)
	case packets.Disconnect:
		err = pk.DisconnectDecode(px)
	case packets.Connack:
		err = pk.ConnackDecode(px)
	case packets.Publish:
		err = pk.PublishDecode(px)
		if err == nil {
			atomic.AddInt64(&cl.ops.info.MessagesReceived, 1)
		}
	case packets.Puback:
		err = pk.PubackDecode(px)
	case packets.Pubrec:
		err = pk.PubrecDecode(px)
	case packets.Pubrel:
		err = pk.PubrelDecode(px)
	case packets.Pubcomp:
		err = pk.PubcompDecode(px)
	case packets.Subscribe:
		err = pk.SubscribeDecode(px)
	case packets.Suback:
		err = pk.SubackDecode(px)
	case packets.Unsubscribe:
		err = pk.UnsubscribeDecode(px)
	case packets.Unsuback:
		err = pk.UnsubackDecode(px)
	case packets.Pingreq:
	case packets.Pingresp:
	case packets.Auth:
		err = pk.AuthDecode(px)
	default:
		err = fmt.Errorf("invalid packet type; %v", pk.FixedHeader.Type)
	}

	if err != nil {
		return pk, err
	}

	pk, err = cl.ops.hooks.OnPacketRead(cl, pk)
	return
}

// readGrowingStart is the first buffer size of readGrowing.
const readGrowingStart = 512

// readGrowing reads exactly n bytes from r, as io.ReadFull does, into a
// buffer that starts at readGrowingStart bytes and doubles as it fills, so
// that it never holds more than twice what arrived (flota patch).
func readGrowing(r io.Reader, n int) ([]byte, error) {
	p := make([]byte, 0, min(n, readGrowingStart))
	for len(p) < n {
		if len(p) == cap(p) {
			q := make([]byte, len(p), min(n, 2*cap(p)))
			copy(q, p)
			p = q
		}
		m, err := r.Read(p[len(p):cap(p)])
		p = p[:len(p)+m]
		if len(p) == n {
			break
		}
		if err == io.EOF {
			return nil, io.ErrUnexpectedEOF
		}
		if err != nil {
			return nil, err
		}
	}
	return p, nil
}

// WritePacket encodes and writes a packet to the client.
func (cl *Client) WritePacket(pk packets.Packet) error {
	if cl.Closed() {
		return ErrConnectionClosed
	}

	if cl.Net.Conn == nil {
		return nil
	}

	buf := encodeBuffers.Get()
	defer encodeBuffers.Put(buf)
	if err := cl.encodePacket(&pk, buf); err != nil {
		return err
	}

	n, err := func() (int64, error) {
		cl.Lock()
		defer cl.Unlock()
		if len(cl.State.outbound) == 0 {
			if cl.Net.outbuf == nil {
				return cl.writeEncoded(buf)
			}

			// first write to buffer, then flush buffer
			n, _ := cl.Net.outbuf.Write(buf.Bytes()) // will always be successful
			err := cl.flushOutbuf()
			return int64(n), err
		}

		// there are more writes in the queue
		if cl.Net.outbuf == nil {
			if buf.Len() >= cl.ops.options.ClientNetWriteBufferSize {
				return cl.writeEncoded(buf)
			}
			cl.Net.outbuf = new(bytes.Buffer)
		}

		n, _ := cl.Net.outbuf.Write(buf.Bytes()) // will always be successful
		if cl.Net.outbuf.Len() < cl.ops.options.ClientNetWriteBufferSize {
			return int64(n), nil
		}

		err := cl.flushOutbuf()
		return int64(n), err
	}()
	if err != nil {
		return err
	}

	cl.packetSent(&pk, n, buf.Bytes())
	return nil
}

// writeEncoded writes buf to the connection, leaving it as it was for
// OnPacketSent: buf.WriteTo, which mochi used, empties it, so a hook got no
// bytes for a packet written straight to the connection (flota patch).
func (cl *Client) writeEncoded(buf *bytes.Buffer) (int64, error) {
	n, err := cl.Net.Conn.Write(buf.Bytes())
	return int64(n), err
}

// encodePacket sets what the client's session decides in pk and encodes it
// into buf, checking it against the maximum packet size: WritePacket's
// first half, which the writer's batches share (flota patch).
func (cl *Client) encodePacket(pk *packets.Packet, buf *bytes.Buffer) error {
	if pk.Expiry > 0 {
		expiry := pk.Expiry - time.Now().Unix()
		if expiry < 1 {
			expiry = 1
		}
		pk.Properties.MessageExpiryInterval = uint32(expiry) // [MQTT-3.3.2-6]
	}

	pk.ProtocolVersion = cl.Properties.ProtocolVersion
	if pk.Mods.MaxSize == 0 { // NB we use this statement to embed client packet sizes in tests
		pk.Mods.MaxSize = cl.Properties.Props.MaximumPacketSize
	}

	if cl.Properties.Props.RequestProblemInfoFlag && cl.Properties.Props.RequestProblemInfo == 0x0 {
		pk.Mods.DisallowProblemInfo = true // [MQTT-3.1.2-29] strict, no problem info on any packet if set
	}

	if pk.FixedHeader.Type != packets.Connack || cl.Properties.Props.RequestResponseInfo == 0x1 || cl.ops.options.Capabilities.Compatibilities.AlwaysReturnResponseInfo {
		pk.Mods.AllowResponseInfo = true // [MQTT-3.1.2-28] we need to know which properties we can encode
	}

	*pk = cl.ops.hooks.OnPacketEncode(cl, *pk)

	var err error
	switch pk.FixedHeader.Type {
	case packets.Connect:
		err = pk.ConnectEncode(buf)
	case packets.Connack:
		err = pk.ConnackEncode(buf)
	case packets.Publish:
		err = pk.PublishEncode(buf)
	case packets.Puback:
		err = pk.PubackEncode(buf)
	case packets.Pubrec:
		err = pk.PubrecEncode(buf)
	case packets.Pubrel:
		err = pk.PubrelEncode(buf)
	case packets.Pubcomp:
		err = pk.PubcompEncode(buf)
	case packets.Subscribe:
		err = pk.SubscribeEncode(buf)
	case packets.Suback:
		err = pk.SubackEncode(buf)
	case packets.Unsubscribe:
		err = pk.UnsubscribeEncode(buf)
	case packets.Unsuback:
		err = pk.UnsubackEncode(buf)
	case packets.Pingreq:
		err = pk.PingreqEncode(buf)
	case packets.Pingresp:
		err = pk.PingrespEncode(buf)
	case packets.Disconnect:
		err = pk.DisconnectEncode(buf)
	case packets.Auth:
		err = pk.AuthEncode(buf)
	default:
		err = fmt.Errorf("%w: %v", packets.ErrNoValidPacketAvailable, pk.FixedHeader.Type)
	}
	if err != nil {
		return err
	}

	if pk.Mods.MaxSize > 0 && uint32(buf.Len()) > pk.Mods.MaxSize {
		return packets.ErrPacketTooLarge // [MQTT-3.1.2-24] [MQTT-3.1.2-25]
	}
	return nil
}

// packetSent counts a packet of n bytes written (or buffered to be) and
// passes it to OnPacketSent with its encoding b: WritePacket's end, which
// the writer's batches share (flota patch).
func (cl *Client) packetSent(pk *packets.Packet, n int64, b []byte) {
	atomic.AddInt64(&cl.ops.info.BytesSent, n)
	atomic.AddInt64(&cl.ops.info.PacketsSent, 1)
	if pk.FixedHeader.Type == packets.Publish {
		atomic.AddInt64(&cl.ops.info.MessagesSent, 1)
	}

	cl.ops.hooks.OnPacketSent(cl, *pk, b)
}

func (cl *Client) flushOutbuf() (err error) {
	if cl.Net.outbuf == nil {
		return
	}

	_, err = cl.Net.outbuf.WriteTo(cl.Net.Conn)
	if err == nil {
		cl.Net.outbuf = nil
	}
	return
}
