# preprocess_train.py — data preprocessing with pandas and scikit-learn, no TensorFlow.
import pandas as pd
from sklearn.model_selection import train_test_split

data = {'col1': [1, 2, 3, 4], 'col2': [5, 6, 7, 8]}
df = pd.DataFrame(data)
X = df[['col1', 'col2']]
y = [0, 1, 0, 1]
X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.2, random_state=42)
print("Preprocessing complete")
