# train.py — training data comes from Cloud Storage at run time, not from the image.
# Keep large_data.csv (or any dataset) out of the image: vxbuild leaves files above
# --max-file-size out and names them.
import io
import os

import numpy as np
from google.cloud import storage
from sklearn.linear_model import LogisticRegression


def download_blob(bucket_name, blob_name):
    """Downloads a blob from Google Cloud Storage."""
    storage_client = storage.Client()
    bucket = storage_client.bucket(bucket_name)
    blob = bucket.blob(blob_name)
    return blob.download_as_bytes()


def main():
    bucket_name = os.environ.get("TRAIN_BUCKET", "my-bucket")
    blob_name = os.environ.get("TRAIN_BLOB", "train_data.csv")
    data = np.genfromtxt(io.BytesIO(download_blob(bucket_name, blob_name)), delimiter=",")
    X = data[:, :-1]
    y = data[:, -1]
    model = LogisticRegression()
    model.fit(X, y)
    print("Training complete")


if __name__ == "__main__":
    main()
