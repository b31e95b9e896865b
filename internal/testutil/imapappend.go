package testutil

import (
	"errors"
	"fmt"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
)

// IMAPAppend APPENDs raw to mailbox over c, creating the mailbox when the
// server says it does not exist ([TRYCREATE], RFC 3501 §6.3.11, or
// [NONEXISTENT], RFC 5530), and returns the new UID (UIDPLUS APPENDUID,
// RFC 4315 §3). The test servers' AppendWith call it.
func IMAPAppend(c *imapclient.Client, mailbox string, raw []byte, flags ...imap.Flag) (imap.UID, error) {
	try := func() (*imap.AppendData, error) {
		cmd := c.Append(mailbox, int64(len(raw)), &imap.AppendOptions{Flags: flags})
		if _, err := cmd.Write(raw); err != nil {
			cmd.Close()
			cmd.Wait()
			return nil, err
		}
		if err := cmd.Close(); err != nil {
			cmd.Wait()
			return nil, err
		}
		return cmd.Wait()
	}
	data, err := try()
	var ierr *imap.Error
	if errors.As(err, &ierr) && (ierr.Code == imap.ResponseCodeTryCreate || ierr.Code == imap.ResponseCodeNonExistent) {
		if err := c.Create(mailbox, nil).Wait(); err != nil {
			return 0, err
		}
		data, err = try()
	}
	if err != nil {
		return 0, err
	}
	return data.UID, nil
}

// IMAPLogin dials addr over plaintext IMAP and logs user in; the caller
// must Logout and Close. who names the server in the error.
func IMAPLogin(who, addr, user, password string) (*imapclient.Client, error) {
	c, err := imapclient.DialInsecure(addr, nil)
	if err != nil {
		return nil, err
	}
	if err := c.Login(user, password).Wait(); err != nil {
		c.Close()
		return nil, fmt.Errorf("%s: login %s: %w", who, user, err)
	}
	return c, nil
}

// IMAPAppendAs logs user in at addr, APPENDs raw to mailbox as IMAPAppend
// does, and logs out.
func IMAPAppendAs(who, addr, user, password, mailbox string, raw []byte, flags ...imap.Flag) (imap.UID, error) {
	c, err := IMAPLogin(who, addr, user, password)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	defer func() { c.Logout().Wait() }()
	return IMAPAppend(c, mailbox, raw, flags...)
}
