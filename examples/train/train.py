# train.py — the article's minimal training script: NumPy and scikit-learn only.
import numpy as np
from sklearn.linear_model import LogisticRegression

X = np.random.rand(100, 10)
y = np.random.randint(0, 2, 100)
model = LogisticRegression()
model.fit(X, y)
print("Training complete")
