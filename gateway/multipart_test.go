package gateway_test

import (
	"io"
	"mime/multipart"
)

// newMultipart writes fields as a multipart form to w in the background and
// returns the request's content type.
func newMultipart(w *io.PipeWriter, fields map[string]string) string {
	mw := multipart.NewWriter(w)
	go func() {
		for k, v := range fields {
			if err := mw.WriteField(k, v); err != nil {
				w.CloseWithError(err)
				return
			}
		}
		w.CloseWithError(mw.Close())
	}()
	return mw.FormDataContentType()
}
